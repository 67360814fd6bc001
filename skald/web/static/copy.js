// The token page's Copy button: the clipboard where the page is a secure context, else select the
// text for Ctrl+C (plain-http hosts have no clipboard API).
document.querySelectorAll("[data-copy]").forEach(function (button) {
  button.addEventListener("click", function () {
    var secret = document.querySelector(button.dataset.copy);
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(secret.textContent.trim()).then(function () { button.textContent = "Copied"; });
    } else {
      var range = document.createRange();
      range.selectNodeContents(secret);
      var selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      button.textContent = "Press Ctrl+C";
    }
  });
});

// /docs: Swagger UI (vendored, see swagger-ui/VENDORED.md) rendering skald's own /openapi.json.
window.addEventListener("DOMContentLoaded", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null, // never call out to an online validator: the page works offline
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});

#!/bin/sh
# The double clutch: the responder receives the request, then answers on a channel it named.
set -eu
S=$PATCHWORK_SERVER
(
  req=$(curl -s -d "reply-$$" "$S/p/res/oneliner-svc?switch=true")
  curl -s -H 'Patch-Status: 202' -d "re: $req" "$S/p/reply-$$" > /dev/null
) &
responder=$!
curl -s -w ' %{http_code}' -d ping "$S/p/req/oneliner-svc"
wait $responder

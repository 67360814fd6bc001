#!/bin/sh
# A responder with a ready answer and a status; the requester gets both.
set -eu
S=$PATCHWORK_SERVER
curl -s -H 'Patch-Status: 201' -d answer "$S/p/res/oneliner-api" > /dev/null &
responder=$!
curl -s -w ' %{http_code}' "$S/p/req/oneliner-api"
wait $responder

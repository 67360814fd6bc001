#!/bin/sh
# The legacy client's `send --get`: the message travels URL-encoded in ?body= on a GET.
set -eu
S=$PATCHWORK_SERVER
curl -s "$S/p/client-get" > "$OUT/got" &
consumer=$!
curl -s "$S/p/client-get?body=hello%20via%20get" > /dev/null
wait $consumer
cat "$OUT/got"

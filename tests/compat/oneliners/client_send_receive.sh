#!/bin/sh
# The legacy shell client's `send` and `receive`: data piped to `curl -X POST --data-binary @-`,
# read back with a plain `curl -s`.
set -eu
S=$PATCHWORK_SERVER
curl -s "$S/p/client-chan" > "$OUT/got" &
consumer=$!
printf '%s' 'hello from send' | curl -s -X POST --data-binary @- "$S/p/client-chan"
wait $consumer
cat "$OUT/got"

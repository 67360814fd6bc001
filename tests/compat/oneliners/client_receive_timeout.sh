#!/bin/sh
# The legacy client's `receive -T 1`: curl gives up after a second; the receiver it leaves behind
# must not swallow the next message.
set -eu
S=$PATCHWORK_SERVER
curl -s --max-time 1 "$S/p/client-timeout" || echo "timed out"
curl -s "$S/p/client-timeout" > "$OUT/got" &
consumer=$!
printf '%s' 'after the timeout' | curl -s -X POST --data-binary @- "$S/p/client-timeout"
wait $consumer
cat "$OUT/got"

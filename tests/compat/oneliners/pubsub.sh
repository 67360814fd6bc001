#!/bin/sh
# Fan-out: every waiting consumer gets the message. A broadcast with nobody
# waiting is dropped, so the producer repeats until both consumers have one.
set -eu
S=$PATCHWORK_SERVER
curl -s "$S/p/pubsub/oneliner-news" > "$OUT/a" &
a=$!
curl -s "$S/p/pubsub/oneliner-news" > "$OUT/b" &
b=$!
until [ -s "$OUT/a" ] && [ -s "$OUT/b" ]; do
  curl -s -d extra "$S/p/pubsub/oneliner-news?pubsub=true" > /dev/null
done
wait $a $b
cat "$OUT/a" "$OUT/b"

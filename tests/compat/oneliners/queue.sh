#!/bin/sh
# A blocking queue: the consumer and the producer meet whichever comes first.
set -eu
S=$PATCHWORK_SERVER
curl -s "$S/p/oneliner-queue" > "$OUT/got" &
consumer=$!
curl -s -d hi "$S/p/oneliner-queue"
wait $consumer
cat "$OUT/got"

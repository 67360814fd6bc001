#!/bin/sh
# The legacy client's `share` and `download`: a binary file posted with --data-binary @file arrives
# byte for byte.
set -eu
S=$PATCHWORK_SERVER
head -c 300000 /dev/urandom > "$OUT/shared.bin"
curl -s -X POST --data-binary "@$OUT/shared.bin" "$S/p/shared.bin" &
sharer=$!
curl -s "$S/p/shared.bin" > "$OUT/downloaded.bin"
wait $sharer
cmp -s "$OUT/shared.bin" "$OUT/downloaded.bin" && echo same

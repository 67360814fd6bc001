#!/bin/sh
# The legacy client's `-n u -t TOKEN`: the token rides in ?token= on both sides.
set -eu
S=$PATCHWORK_SERVER
curl -s "$S/u/alice/deploys?token=$TOKEN" > "$OUT/got" &
consumer=$!
printf '%s' 'deploy completed' | curl -s -X POST --data-binary @- "$S/u/alice/deploys?token=$TOKEN"
wait $consumer
cat "$OUT/got"

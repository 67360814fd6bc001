#!/bin/sh
# The legacy client's `-n h -s SECRET`: a forward hook minted at /h; senders need its secret,
# receivers do not.
set -eu
S=$PATCHWORK_SERVER
hook=$(curl -s "$S/h")
channel=$(printf '%s' "$hook" | sed -n 's/.*"channel": *"\([^"]*\)".*/\1/p')
secret=$(printf '%s' "$hook" | sed -n 's/.*"secret": *"\([^"]*\)".*/\1/p')
curl -s "$S/h/$channel" > "$OUT/got" &
consumer=$!
printf '%s' 'notification' | curl -s -X POST --data-binary @- "$S/h/$channel?secret=$secret"
wait $consumer
cat "$OUT/got"

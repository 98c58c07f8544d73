#!/bin/sh
# Mints one fresh single-use join token per sidecar of the compose stack and
# writes it where that sidecar alone can read it: <dir>/<service>/token.
#
#   join-tokens.sh SERVICE=AGENT/TEAM [SERVICE=AGENT/TEAM ...]
#
# SERVICE names the token's folder (the sidecar mounts that folder only);
# AGENT/TEAM is the identity it may enroll as:
# spiffe://<trust-domain>/team/<TEAM>/agent/<AGENT>. Tokens come from the
# control plane's admin API (`agentmesh token create`, role admin) at
# $AGENTMESH_CONTROL_PLANE with the admin token $AGENTMESH_TOKEN. Each token
# allows one enrollment and expires after $JOIN_TOKEN_TTL (default 10m): a
# sidecar that already holds an identity in its volume renews it and never
# uses the token. Files are mode 0600 in folders of mode 0700.
#
# Environment: AGENTMESH_CONTROL_PLANE, AGENTMESH_TOKEN, JOIN_TOKENS_DIR
# (default /var/lib/agentmesh), JOIN_TOKEN_TTL (default 10m).
# Exit codes: 0 every token written; 2 a malformed argument; otherwise
# `agentmesh token create`'s (1 refused, 3 control plane unreachable).
set -eu
umask 077

dir=${JOIN_TOKENS_DIR:-/var/lib/agentmesh}
ttl=${JOIN_TOKEN_TTL:-10m}

if [ "$#" -eq 0 ]; then
    echo "join-tokens: no sidecars given: expected SERVICE=AGENT/TEAM arguments" >&2
    exit 2
fi
# Names are DNS labels: letters, digits and '-' (the service also names a folder).
label() {
    case $1 in
        "" | -* | *[!a-z0-9-]*) return 1 ;;
    esac
}
for entry in "$@"; do
    service=${entry%%=*}
    scope=${entry#*=}
    agent=${scope%%/*}
    team=${scope#*/}
    if [ "$service" = "$entry" ] || [ "$agent" = "$scope" ] || ! label "$service" || ! label "$agent" || ! label "$team"; then
        echo "join-tokens: '$entry' is not SERVICE=AGENT/TEAM (e.g. researcher=researcher/research)" >&2
        exit 2
    fi
done

for entry in "$@"; do
    service=${entry%%=*}
    scope=${entry#*=}
    agent=${scope%%/*}
    team=${scope#*/}
    mkdir -p "$dir/$service"
    # Written aside and renamed: a sidecar never reads half a token.
    agentmesh token create --agent "$agent" --team "$team" --ttl "$ttl" \
        --description "compose: $service sidecar" >"$dir/$service/token.new" || {
        status=$?
        rm -f "$dir/$service/token.new"
        echo "join-tokens: no join token for $service ($agent of team $team)" >&2
        exit "$status"
    }
    mv -f "$dir/$service/token.new" "$dir/$service/token"
    echo "join-tokens: $service may enroll once as $agent of team $team within $ttl"
done

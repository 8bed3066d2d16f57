#!/usr/bin/env bash
# scripts/link.sh MOUNTPOINT ENV PATH LOCALFILE
#
# Link the content of LOCALFILE at ENV/PATH in a fusestore mount without
# uploading it, by proving you hold the same bytes the store already has.
# A worked example of the /.requests protocol for clients that have nothing
# but a shell: bash, printf, cat, dd and b3sum. (`fusestore link` does the
# same in Python.)
#
# Exit status (see usage below): 0 linked, 1 other error, 2 bad usage,
# 3 the store does not hold the content (upload it), 4 refused.

set -u
# Byte-wise strings for the percent-encoding, and system error messages in
# English, since the errno of each step is read from printf's message.
export LC_ALL=C

usage() {
    cat <<EOF
usage: ${0##*/} MOUNTPOINT ENV PATH LOCALFILE

Link the content of LOCALFILE at ENV/PATH in a fusestore mount, without
uploading it, when the store already holds the same bytes.

exit status:
  0  linked
  1  any other error (not a fusestore mount, unreadable file, busy, ...)
  2  bad usage
  3  the store does not hold that content: upload it instead (e.g. cp)
  4  refused: wrong answer, request expired, or you may not write PATH
EOF
}
fail() {  # fail CODE MESSAGE
    printf 'link.sh: %s\n' "$2" >&2
    exit "$1"
}

case ${1:-} in -h | --help) usage; exit 0 ;; esac
[ $# -eq 4 ] || { usage >&2; exit 2; }
mountpoint=$1 env=$2 path=$3 localfile=$4
if [ ! -d "$mountpoint/.requests" ]; then
    [ -f "$mountpoint/.stats" ] || fail 1 "$mountpoint is not a fusestore mount (neither .requests nor .stats)"
    fail 1 "requests are off on $mountpoint (mounted with --requests-off): copy the file in instead"
fi
[ -f "$localfile" ] && [ -r "$localfile" ] || fail 1 "cannot read $localfile"

# PATH goes into a space-separated line, so every byte outside
# A-Za-z0-9._~/- is written as %XX (a space is %20, "é" is %C3%A9).
# With LC_ALL=C, ${#path} counts bytes and ${path:i:1} is one byte.
percent_encode() {
    local s=$1 out='' c i code hex
    for ((i = 0; i < ${#s}; i++)); do
        c=${s:i:1}
        case $c in
            [A-Za-z0-9._~/-]) out+=$c ;;
            *)
                printf -v code '%d' "'$c"       # the byte's value ('X is printf's "value of X")
                ((code < 0)) && ((code += 256))  # some bash versions see bytes as signed
                printf -v hex '%%%02X' "$code"
                out+=$hex
                ;;
        esac
    done
    printf '%s' "$out"
}

# Each step is one write to the request file; the daemon's verdict is the
# write's errno, which bash's printf reports as
#   "bash: printf: write error: No such file or directory".
# send LINE: write LINE and a newline; on failure, $reason holds the text
# after the last ": " of that message (the strerror text), or says that the
# file could not even be opened.
send() {
    local out
    out=$( { printf '%s\n' "$1" >"$request"; } 2>&1 ) && return 0
    case $out in
        *"write error: "*) reason=${out##*: } ;;
        *) reason="cannot open $request: ${out##*: }" ;;
    esac
    return 1
}

# The request file's name: anything unique among your requests, 1 to 64 of
# A-Za-z0-9._- (each uid sees only its own requests).
request="$mountpoint/.requests/link-$$-$RANDOM$RANDOM"
target="$env/$path"
# Tidy up on the way out, whatever happens: an answered request stays
# visible for a while, a failed ask is gone already (hence rm -f).
trap 'rm -f "$request"' EXIT

# Step 0: the BLAKE3 of the whole local file (b3sum streams it).
hash=$(b3sum --no-names "$localfile") || fail 1 "cannot hash $localfile"

# Step 1, ask: "put ENV PATH HASH". The store has no such content: ENOENT.
if ! send "put $env $(percent_encode "$path") $hash"; then
    case $reason in
        "No such file or directory")
            fail 3 "the store does not hold the content of $target (blake3 $hash): upload it" ;;
        "Permission denied" | "Operation not permitted")
            fail 4 "refused: you may not write $target" ;;
        "Resource temporarily unavailable")
            fail 1 "$target: that content is still being uploaded; try again shortly" ;;
        "Device or resource busy")
            fail 1 "$target: too many open requests; try again shortly" ;;
        "Invalid argument")
            fail 1 "$target: the store rejected the request (is ENV a lowercase UUID and PATH relative?)" ;;
        *)
            fail 1 "$target: $reason" ;;
    esac
fi

# Step 2, read the challenge:
#   status challenged
#   range OFFSET LENGTH      (several, in order)
#   expires UNIX_SECONDS
challenge=$(cat "$request") || fail 1 "cannot read $request"
status='' ranges=()
while read -r key first second; do
    case $key in
        status) status=$first ;;
        range) ranges+=("$first $second") ;;
    esac
done <<<"$challenge"
[ "$status" = expired ] && fail 4 "refused: the request for $target expired before the answer"
[ "$status" = challenged ] || fail 1 "$target: unexpected request status '$status'"

# Step 3, answer: the BLAKE3 of those ranges of the local file, concatenated
# in order. GNU dd's skip_bytes/count_bytes make skip= and count= byte counts.
answer=$(
    for r in "${ranges[@]}"; do
        read -r offset length <<<"$r"
        dd if="$localfile" bs=65536 iflag=skip_bytes,count_bytes skip="$offset" count="$length" status=none
    done | b3sum --no-names
) || fail 1 "cannot read the ranges of $localfile"

if ! send "$answer"; then
    case $reason in
        "Permission denied")
            fail 4 "refused: wrong answer for $target (the local file differs from the store's content)" ;;
        "Connection timed out")
            fail 4 "refused: the request for $target expired before the answer" ;;
        "Stale file handle")
            fail 3 "the content was deleted from the store during the exchange for $target: upload it" ;;
        *)
            fail 1 "$target: $reason" ;;
    esac
fi

# Accepted: the file is there, and not one byte of it was uploaded.
printf 'linked %s as %s (blake3 %s, no upload)\n' "$localfile" "$target" "$hash"

#!/usr/bin/env bash
# Fetch the robo-poet corpus (Alice in Wonderland, Gutenberg #11; Hamlet, #1524) into DEST.
# Usage: scripts/fetch_corpus.sh [DEST=data] [--from MIRROR_DIR]
#   --from DIR  copy alice_raw.txt, alice_wonderland.txt, hamlet_raw.txt, hamlet_shakespeare.txt
#               (whichever exist) from a mirror folder instead of downloading.
# Downloads come from $ROBO_POET_GUTENBERG_URL (default https://www.gutenberg.org); each raw book
# is then cleaned into alice_wonderland.txt / hamlet_shakespeare.txt (data/SOURCES.md).
set -euo pipefail

dest=data
from=""
while [ $# -gt 0 ]; do
  case "$1" in
    --from) [ $# -ge 2 ] || { echo "error: --from needs a folder" >&2; exit 2; }; from=$2; shift 2 ;;
    --from=*) from=${1#--from=}; shift ;;
    -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) dest=$1; shift ;;
  esac
done
if [ -n "$from" ] && [ ! -d "$from" ]; then
  echo "error: mirror folder $from does not exist" >&2; exit 1
fi
mkdir -p "$dest"

if [ -n "$from" ]; then
  for book in "alice_raw.txt alice_wonderland.txt" "hamlet_raw.txt hamlet_shakespeare.txt"; do
    copied=0
    for f in $book; do
      if [ -f "$from/$f" ]; then
        cp "$from/$f" "$dest/$f"; echo "copied $from/$f -> $dest/$f"; copied=1
      fi
    done
    [ "$copied" = 1 ] || { echo "error: $from has neither of: $book" >&2; exit 1; }
  done
  exit 0
fi

base=${ROBO_POET_GUTENBERG_URL:-https://www.gutenberg.org}
base=${base%/}
tmp=""
trap '[ -z "$tmp" ] || rm -f "$tmp"' EXIT
for pair in 11:alice_raw.txt 1524:hamlet_raw.txt; do
  id=${pair%%:*}; name=${pair#*:}
  url="$base/cache/epub/$id/pg$id.txt"
  tmp="$dest/.$name.part"
  if ! curl -fsSL --connect-timeout 15 --max-time 300 -o "$tmp" "$url"; then
    echo "error: could not download $url (offline? use --from MIRROR_DIR, or robo-poet --data DIR)" >&2
    exit 1
  fi
  if ! grep -qi '^\*\*\* *START OF' "$tmp" || ! grep -qi '^\*\*\* *END OF' "$tmp"; then
    echo "error: $url is not a Project Gutenberg text (no *** START OF / *** END OF lines)" >&2
    exit 1
  fi
  mv "$tmp" "$dest/$name"; tmp=""
  echo "downloaded $url -> $dest/$name"
done

# The cleaned copies, by the rule of data/SOURCES.md (the same as robo-poet's clean_gutenberg):
# BOM dropped, CRLF and lone CR to LF, only the text between the *** START OF / *** END OF
# sentinel lines, whitespace trimmed at both ends, one final newline.
if ! command -v python3 > /dev/null; then
  echo "note: no python3, so only the raw files were written; robo-poet cleans them itself when it loads them"
  exit 0
fi
for pair in alice_raw.txt:alice_wonderland.txt hamlet_raw.txt:hamlet_shakespeare.txt; do
  python3 - "$dest/${pair%%:*}" "$dest/${pair#*:}" <<'PY'
import re, sys
raw = open(sys.argv[1], encoding="utf-8").read()
text = raw.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
sentinel = re.compile(r"^\s*\*\*\*+\s*(START|END) OF TH(E|IS) PROJECT GUTENBERG", re.I)
start, end, seen_start, offset = 0, None, False, 0
# Lines end at LF only (str.splitlines would also split at U+2028 and others).
for line in re.split(r"(?<=\n)", text):
    m = sentinel.match(line)
    if m and m.group(1).upper() == "START" and not seen_start:
        seen_start, start = True, offset + len(line)
    elif m and m.group(1).upper() == "END":
        end = offset
        break
    offset += len(line)
body = text[start:end].strip()
open(sys.argv[2], "w", encoding="utf-8", newline="\n").write(body + "\n" if body else "")
print(f"cleaned {sys.argv[1]} -> {sys.argv[2]}")
PY
done

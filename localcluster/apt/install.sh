#!/usr/bin/env bash
# Install the Debian packages listed in the given files (one per line, `#` comments) when missing.
# Quiet when all are installed; needs root (or passwordless sudo) otherwise.
#   bash localcluster/apt/install.sh localcluster/apt/image.txt [MORE.txt ...]
set -euo pipefail
want=$(sed -e 's/#.*//' "$@" | tr -s ' \t' '\n' | sed '/^$/d' | sort -u)
missing=()
for pkg in $want; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "$0: missing Debian packages: ${missing[*]}; install them as root: apt-get install ${missing[*]}" >&2
  exit 1
fi
command -v apt-get >/dev/null || { echo "$0: no apt-get here; install ${missing[*]} yourself" >&2; exit 1; }
echo "$0: installing ${missing[*]}" >&2
"${sudo[@]}" apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >&2

#!/bin/sh
# Runs the Deno that package.json pins (npm package "deno"), putting it first on the PATH
# so that `deno` inside `deno task` commands is the same binary. Falls back to a `deno`
# already on the PATH.
here=$(cd "$(dirname "$0")/.." && pwd)
for c in "$here/node_modules/@deno/linux-x64-glibc/deno" "$here/node_modules/@deno/linux-arm64-glibc/deno" \
         "$here/node_modules/deno/deno"; do
  if [ -x "$c" ]; then
    PATH="$(dirname "$c"):$PATH"
    export PATH
    break
  fi
done
command -v deno >/dev/null 2>&1 || { echo "deno not found: run npm install first" >&2; exit 1; }
export DENO_NO_UPDATE_CHECK=1
exec deno "$@"

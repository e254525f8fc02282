#!/usr/bin/env bash
# Fails when a cargo invocation that users make in this workspace would build a dependency with
# other features than the README's test command (`cargo test --workspace`) does: whichever runs
# second then rebuilds that crate and everything above it, which for a crate under burn is most
# of a cold build. Static (reads `cargo tree`), so it takes seconds and compiles nothing.
# workspace-hack/Cargo.toml is where a difference is removed.
set -euo pipefail
cd "$(dirname "$0")/.."
resolve() { # cargo tree args... -> "name version features" per package, workspace crates left out
  cargo tree "$@" --prefix none --format '{p} [{f}]' |
    sed 's/ (\*)//; s/ (proc-macro)//' | grep -Ev '^(lora-[a-z]+|workspace-hack) ' | sort -u
}
sets() { # "name version [features]" lines -> "name@version set;set" (sorted), one per package
  awk '{ k = $1 "@" $2; v[k] = (k in v) ? v[k] ";" $3 : $3 } END { for (k in v) print k, v[k] }' |
    while read -r k v; do printf '%s %s\n' "$k" "$(tr ';' '\n' <<<"$v" | sed '/^$/d' | sort -u | paste -sd';')"; done |
    sort
}
reference=$(resolve --workspace -e normal,build,dev)
if [ -z "$reference" ]; then
  echo "error: cargo tree resolved no dependencies" >&2
  exit 1
fi
status=0
check() { # label, cargo tree args...
  local label=$1; shift
  local mine diff
  mine=$(resolve "$@" -e normal,build)
  # Per package (name@version) both build: its feature sets (a package built for build scripts
  # and for the target can have two), compared as a whole.
  diff=$(join -j1 <(printf '%s\n' "$reference" | sets) <(printf '%s\n' "$mine" | sets) |
         awk '$2 != $3 { print "  " $1 ": " $2 " (test command) vs " $3 }')
  if [ -n "$diff" ]; then
    echo "error: \`$label\` builds these dependencies with other features than \`cargo test --workspace\`:" >&2
    printf '%s\n' "$diff" >&2
    status=1
  else
    echo "features check: \`$label\` builds every shared dependency with the test command's features"
  fi
}
check "cargo run -p lora-examples" -p lora-examples
check "cargo run -p lora-bench" -p lora-bench
check "cargo run -p lora-examples --features hub" -p lora-examples --features hub
exit $status

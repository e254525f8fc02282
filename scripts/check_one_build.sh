#!/usr/bin/env bash
# Usage: check_one_build.sh FIRST.log SECOND.log
# The two logs are cargo's output of two invocations run one after the other in the same target
# directory (e.g. the README's main-job build, then its test command). Fails, naming them, when
# the second compiled a dependency that the first had compiled already: that means the two
# invocations resolved different features for it (see workspace-hack/Cargo.toml).
set -euo pipefail
compiled() {
  # "   Compiling regex-automata v0.4.18" -> "regex-automata v0.4.18"; workspace crates excluded.
  sed -n 's/^ *Compiling \([^ ]*\) \(v[^ ]*\).*/\1 \2/p' "$1" |
    grep -Ev '^(lora-[a-z]+|workspace-hack) ' | sort -u
}
both=$(comm -12 <(compiled "$1") <(compiled "$2"))
n_first=$(compiled "$1" | wc -l)
n_second=$(compiled "$2" | wc -l)
n_both=$(printf '%s' "$both" | grep -c . || true)
echo "one-build check: first command compiled $n_first dependencies; the second compiled $n_second, of which $n_both again"
if [ "$n_both" -gt 0 ]; then
  echo "error: the second command rebuilt dependencies the first had built (different features):" >&2
  printf '  %s\n' $both | paste - - >&2
  exit 1
fi

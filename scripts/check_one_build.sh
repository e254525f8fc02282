#!/usr/bin/env bash
# Usage: check_one_build.sh FIRST.log SECOND.log [MORE.log ...]
# The logs are cargo's output of invocations run one after the other in the same target
# directory (e.g. the README's main-job build, then its test command). Fails, naming them, when
# a later one compiled a dependency that an earlier one had compiled already: the invocations
# then resolved different features for it (see workspace-hack/Cargo.toml).
set -euo pipefail
compiled() {
  # "   Compiling regex-automata v0.4.18" -> "regex-automata v0.4.18"; workspace crates excluded.
  sed -n 's/^ *Compiling \([^ ]*\) \(v[^ ]*\).*/\1 \2/p' "$1" |
    grep -Ev '^(lora-[a-z]+|workspace-hack) ' | sort -u || true
}
seen=$(compiled "$1")
echo "one-build check: $1 compiled $(printf '%s' "$seen" | grep -c . || true) dependencies"
status=0
shift
for log in "$@"; do
  now=$(compiled "$log")
  again=$(comm -12 <(printf '%s\n' "$seen" | sed '/^$/d') <(printf '%s\n' "$now" | sed '/^$/d'))
  n_now=$(printf '%s' "$now" | grep -c . || true)
  n_again=$(printf '%s' "$again" | grep -c . || true)
  echo "one-build check: $log compiled $n_now dependencies, $n_again of them again"
  if [ "$n_again" -gt 0 ]; then
    echo "error: $log rebuilt dependencies an earlier command had built (different features):" >&2
    printf '%s\n' "$again" | sed 's/^/  /' >&2
    status=1
  fi
  seen=$(printf '%s\n%s\n' "$seen" "$now" | sed '/^$/d' | sort -u)
done
exit $status

# shellcheck shell=bash
# phoenix-first-boot CONFIG DEFAULT_TOML DEFAULT_JSON [--ec2-user-data]
#
# Runs before every start of phoenix.service (ExecStartPre) and writes the
# appliance's one TOML file, CONFIG, when it does not exist yet. When it
# exists this does nothing: the file belongs to the operator, and a restart,
# a rebuild or an upgrade never overwrites an edit.
#
# The new file comes from the image's defaults (DEFAULT_TOML, the module's
# `settings`, already checked at build time), or with --ec2-user-data from
# the instance's EC2 user data read over IMDSv2, merged key by key over the
# defaults (DEFAULT_JSON, the same settings as JSON), so that user data need
# not know the image's program paths. User data is taken only when the merged
# result passes `phoenix-supervisor check-config`; otherwise it is kept next
# to CONFIG as user-data.rejected, the reason is logged, and the defaults are
# used. PHOENIX_IMDS_ENDPOINT replaces http://169.254.169.254 (for tests).
#
# Needs on PATH: coreutils, curl, jq, toml2json and json2toml (remarshal),
# phoenix-supervisor.
set -euo pipefail

if [[ $# -lt 3 || $# -gt 4 || ($# -eq 4 && $4 != --ec2-user-data) ]]; then
  echo "usage: phoenix-first-boot CONFIG DEFAULT_TOML DEFAULT_JSON [--ec2-user-data]" >&2
  exit 2
fi
config=$1
default_toml=$2
default_json=$3
use_user_data=false
if [[ $# -eq 4 ]]; then
  use_user_data=true
fi
imds=${PHOENIX_IMDS_ENDPOINT:-http://169.254.169.254}

if [[ -e $config ]]; then
  exit 0
fi

say() {
  echo "phoenix-first-boot: $*" >&2
}

# Prints nothing and fails when there is no user data to use; says why.
fetch_user_data() {
  local out=$1 token status
  if ! token=$(curl --silent --fail --connect-timeout 2 --max-time 5 --retry 3 --retry-connrefused \
    --request PUT --header "X-aws-ec2-metadata-token-ttl-seconds: 60" "$imds/latest/api/token"); then
    say "no EC2 instance metadata service (IMDSv2) answered at $imds; not on EC2?"
    return 1
  fi
  if ! status=$(curl --silent --connect-timeout 2 --max-time 10 --retry 3 --retry-connrefused \
    --header "X-aws-ec2-metadata-token: $token" --output "$out" --write-out '%{http_code}' \
    "$imds/latest/user-data"); then
    say "reading EC2 user data from $imds failed"
    return 1
  fi
  case $status in
    200)
      if [[ -s $out ]]; then
        return 0
      fi
      say "the EC2 user data is empty"
      ;;
    404) say "no EC2 user data was given" ;;
    *) say "reading EC2 user data answered HTTP $status" ;;
  esac
  return 1
}

dir=$(dirname "$config")
if [[ ! -d $dir ]]; then
  install -d -m 0755 "$dir"
fi
umask 077
work=$(mktemp -d "$dir/.first-boot.XXXXXX")
trap 'rm -rf "$work"' EXIT

origin="the image's defaults ($default_toml)"
cp "$default_toml" "$work/body.toml"

if $use_user_data && fetch_user_data "$work/user-data"; then
  if toml2json "$work/user-data" >"$work/user-data.json" 2>"$work/why" &&
    jq --slurp '.[0] * .[1]' "$default_json" "$work/user-data.json" >"$work/merged.json" 2>>"$work/why" &&
    json2toml "$work/merged.json" "$work/merged.toml" 2>>"$work/why" &&
    phoenix-supervisor check-config --config "$work/merged.toml" >>"$work/why" 2>&1; then
    cp "$work/merged.toml" "$work/body.toml"
    origin="EC2 user data over the image's defaults"
  else
    cp "$work/user-data" "$dir/user-data.rejected"
    say "the EC2 user data is not a valid Phoenix config (below); using the image's defaults." \
      "The user data is kept in $dir/user-data.rejected."
    cat "$work/why" >&2
  fi
fi

{
  echo "# The Phoenix appliance's configuration, written at first boot from"
  echo "# $origin."
  echo "# It is yours: rebuilds and upgrades never change it. Check an edit with"
  echo "# 'phoenix-supervisor check-config --config $config', apply it with"
  echo "# 'phoenixctl reload'. The image's current defaults are in"
  echo "# $dir/phoenix.default.toml; every key is in docs/configuration.md."
  echo
  cat "$work/body.toml"
} >"$work/phoenix.toml"
chmod 0600 "$work/phoenix.toml"
mv "$work/phoenix.toml" "$config"
say "wrote $config from $origin"

#!/usr/bin/env bash
# Build kube-apiserver and kube-controller-manager for weft's Kubernetes tests.
#
# Why this exists: no prebuilt apiserver (k3s, kind, envtest, kwok) is reachable from the
# machines weft is developed on, but Debian's `kubernetes` source package (1.20.x) carries the
# whole tree including vendor/, so it builds offline with Debian's Go 1.19.
#
# What it does, and what it must never do:
#   * fetches the source through a *private* apt configuration (own sources dir, lists and
#     cache) pointing at the Debian mirror this machine already uses; the system's apt state
#     is never modified (apart from installing golang-1.19-go, rsync, make and dpkg-dev when they
#     are missing, with sudo when not root);
#   * builds both binaries once (4 to 7 min on 2 cores, ~1.4 GB RAM, ~2.2 GB scratch disk) and
#     caches them in ${WEFT_KUBE_CACHE:-$HOME/.cache/weft/kube-$WEFT_KUBE_VERSION}/;
#   * when the binaries are already cached it prints the cache dir and exits at once.
#
# Usage: scripts/kube-binaries.sh        # prints the directory holding the two binaries
# Environment:
#   WEFT_KUBE_VERSION  upstream version expected in the Debian package (default 1.20.2)
#   WEFT_KUBE_SUITE    Debian suite that carries that package (default bookworm)
#   WEFT_KUBE_CACHE    cache directory (default $HOME/.cache/weft/kube-$WEFT_KUBE_VERSION)
set -euo pipefail

KUBE_VERSION="${WEFT_KUBE_VERSION:-1.20.2}"
SUITE="${WEFT_KUBE_SUITE:-bookworm}"
CACHE_DIR="${WEFT_KUBE_CACHE:-${HOME}/.cache/weft/kube-${KUBE_VERSION}}"
BINARIES=(kube-apiserver kube-controller-manager)
GO_BIN=/usr/lib/go-1.19/bin

log() { printf 'kube-binaries: %s\n' "$*" >&2; }

cached() {
  local b
  for b in "${BINARIES[@]}"; do
    [[ -x "${CACHE_DIR}/${b}" ]] || return 1
  done
}

if cached; then
  echo "${CACHE_DIR}"
  exit 0
fi

# The mirror must be the one this machine is already configured with (a user's network may
# reach only that one), so read it from apt's own configuration rather than hard-coding it.
# Prints "URI<TAB>SIGNED_BY" for the first source serving the main archive (not -security,
# not -updates), from deb822 *.sources files and one-line *.list files alike.
debian_mirror() {
  local f
  local files=()
  [[ -f /etc/apt/sources.list ]] && files+=(/etc/apt/sources.list)
  for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [[ -f "$f" ]] && files+=("$f")
  done
  for f in "${files[@]}"; do
    if [[ "$f" == *.sources ]]; then
      # deb822: stanzas separated by blank lines; keep the first stanza of Types "deb" whose
      # Suites include a plain codename (no "-security"/"-updates") and Components has main.
      awk -v RS='' '
        {
          types = ""; uris = ""; suites = ""; comps = ""; signed = ""
          n = split($0, lines, "\n")
          for (i = 1; i <= n; i++) {
            line = lines[i]
            if (line ~ /^[[:space:]]*#/) continue
            if (match(line, /^[A-Za-z-]+:/)) {
              key = tolower(substr(line, 1, RLENGTH - 1))
              val = substr(line, RLENGTH + 1)
              gsub(/^[[:space:]]+|[[:space:]]+$/, "", val)
              if (key == "types") types = val
              else if (key == "uris") uris = val
              else if (key == "suites") suites = val
              else if (key == "components") comps = val
              else if (key == "signed-by") signed = val
            }
          }
          if (types !~ /(^|[[:space:]])deb([[:space:]]|$)/) next
          if (comps !~ /(^|[[:space:]])main([[:space:]]|$)/) next
          ns = split(suites, s, /[[:space:]]+/)
          plain = 0
          for (j = 1; j <= ns; j++) if (s[j] !~ /-/) plain = 1
          if (!plain) next
          split(uris, u, /[[:space:]]+/)
          printf "%s\t%s\n", u[1], signed
          exit
        }' "$f"
    else
      # one-line format: deb [options] URI suite component...
      awk '
        /^[[:space:]]*deb[[:space:]]/ {
          opts = ""; i = 2
          if ($2 ~ /^\[/) {
            while (i <= NF && $i !~ /\]$/) { opts = opts " " $i; i++ }
            opts = opts " " $i; i++
          }
          uri = $i; suite = $(i + 1)
          if (suite ~ /-/) next
          main = 0
          for (k = i + 2; k <= NF; k++) if ($k == "main") main = 1
          if (!main) next
          signed = ""
          if (match(opts, /signed-by=[^] ]+/)) signed = substr(opts, RSTART + 10, RLENGTH - 10)
          printf "%s\t%s\n", uri, signed
          exit
        }' "$f"
    fi
  done | head -n 1
}

ensure_tools() {
  local missing=()
  [[ -x "${GO_BIN}/go" ]] || missing+=(golang-1.19-go)
  command -v rsync >/dev/null || missing+=(rsync)
  command -v make >/dev/null || missing+=(make)
  command -v dpkg-source >/dev/null || missing+=(dpkg-dev)
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    local sudo=()
    if [[ "$(id -u)" != 0 ]]; then
      command -v sudo >/dev/null || { log "not root and no sudo: install ${missing[*]} first"; exit 1; }
      sudo=(sudo)
    fi
    # A fresh machine's package lists may be empty or stale. dpkg's unpack chatter goes to a
    # log that is shown only if the install fails.
    local apt_log
    apt_log="$(mktemp)"
    # `env VAR=...` rather than a prefix assignment: sudo would drop the variable.
    if ! { "${sudo[@]}" apt-get update -qq &&
      "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >"${apt_log}" 2>&1; then
      cat "${apt_log}" >&2
      rm -f "${apt_log}"
      exit 1
    fi
    rm -f "${apt_log}"
  fi
}

ensure_tools

mirror_line="$(debian_mirror)"
if [[ -z "${mirror_line}" ]]; then
  log "no Debian mirror found in /etc/apt/sources.list or /etc/apt/sources.list.d/"
  exit 1
fi
mirror_uri="${mirror_line%%$'\t'*}"
signed_by="${mirror_line#*$'\t'}"
log "using Debian mirror ${mirror_uri} (suite ${SUITE})"

mkdir -p "$(dirname "${CACHE_DIR}")"
WORK="$(mktemp -d "$(dirname "${CACHE_DIR}")/kube-build.XXXXXX")"
trap 'rm -rf "${WORK}"' EXIT

# A private apt configuration: sources, lists and cache all live in ${WORK}.
mkdir -p "${WORK}/apt/sources" "${WORK}/apt/lists/partial" "${WORK}/apt/cache/archives/partial" "${WORK}/src"
options=""
[[ -n "${signed_by}" ]] && options="[signed-by=${signed_by}] "
printf 'deb-src %s%s %s main\n' "${options}" "${mirror_uri}" "${SUITE}" >"${WORK}/apt/sources/weft-kube.list"
APT_OPTS=(
  -o "Dir::Etc::SourceList=/dev/null"
  -o "Dir::Etc::SourceParts=${WORK}/apt/sources"
  -o "Dir::State::Lists=${WORK}/apt/lists"
  -o "Dir::Cache=${WORK}/apt/cache"
  # The scratch dir may sit in a home the _apt sandbox user cannot read.
  -o "APT::Sandbox::User=root"
)
log "fetching the package index"
apt-get "${APT_OPTS[@]}" update >&2
log "downloading the kubernetes source package"
(cd "${WORK}/src" && apt-get "${APT_OPTS[@]}" source --download-only kubernetes >&2)

dsc="$(ls "${WORK}"/src/kubernetes_*.dsc)"
deb_version="$(sed -n 's/^Version: //p' "${dsc}")"
case "${deb_version}" in
  *"${KUBE_VERSION}"*) ;;
  *)
    log "Debian's kubernetes is ${deb_version}, expected upstream ${KUBE_VERSION};" \
      "set WEFT_KUBE_VERSION or WEFT_KUBE_SUITE"
    exit 1
    ;;
esac
log "unpacking kubernetes ${deb_version}"
(cd "${WORK}/src" && dpkg-source --no-check -x "${dsc}" tree >&2)

# `make` (not plain `go build`): it generates code the build needs. GOPROXY=off keeps it
# offline (vendor/ has everything); CGO_ENABLED=0 makes static binaries; GOCACHE lives in the
# scratch dir so a ~1 GB Go build cache is not left behind in $HOME.
log "building ${BINARIES[*]} (4 to 7 minutes on 2 cores)"
start=${SECONDS}
(
  cd "${WORK}/src/tree"
  PATH="${GO_BIN}:${PATH}" GOPROXY=off CGO_ENABLED=0 \
    GOCACHE="${WORK}/gocache" \
    make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >&2
)
log "built in $((SECONDS - start)) s"

# Copy into a staging dir, then rename into place so a concurrent reader never sees a
# half-written binary.
stage="${WORK}/stage"
mkdir -p "${stage}"
for b in "${BINARIES[@]}"; do
  install -m 0755 "${WORK}/src/tree/_output/bin/${b}" "${stage}/${b}"
done
printf '%s\n' "${deb_version}" >"${stage}/DEBIAN_VERSION"
mkdir -p "${CACHE_DIR}"
for f in "${BINARIES[@]}" DEBIAN_VERSION; do
  mv -f "${stage}/${f}" "${CACHE_DIR}/${f}"
done
echo "${CACHE_DIR}"

#!/usr/bin/env bash
# The longer fuzzing (docs/fuzzing.md): runs the cargo-fuzz targets of fuzz/
# on the stable toolchain, then folds what they found into the corpus in
# fixtures/fuzz/, which `cargo test --test it fuzz_corpus` replays in CI.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]   # default: 300 s for each target
#   scripts/fuzz.sh seed                    # rewrite the fixture-derived seeds
#
# Targets: decode_prolan202, decode_prolan501, config.
#
# Stable toolchain: with `--sanitizer none` cargo-fuzz passes rustc only
# stable flags (sancov coverage through -Cpasses and -Cllvm-args, --cfg
# fuzzing, debug assertions), so no nightly and no RUSTC_BOOTSTRAP is needed.
# AddressSanitizer (cargo-fuzz's default) needs -Zsanitizer: see
# docs/fuzzing.md; the agent has no `unsafe` code of its own for it to check.
# libFuzzer finds panics, failed invariants, timeouts and out-of-memory.
#
# FUZZ_SKIP=<check>[,...] turns off a check of tests/fuzz_checks/mod.rs that
# a bug already saved and reported breaks, to fuzz past it until it is fixed.
#
# A run fuzzes in fuzz/corpus/<target> (git-ignored, seeded from the
# fixtures), then folds it into fixtures/fuzz/<target>: a few dozen inputs
# that add the most coverage, the agent's own code first
# (fold_into_fixtures), so the corpus stays small. A crash is minimised
# (`cargo fuzz tmin`) into fixtures/fuzz/<target>/crash-<hash>, where the
# replay test fails until the bug is fixed; the script then exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."

targets_all=(decode_prolan202 decode_prolan501 config)

# Writes fixtures/fuzz/<target>/ seeds from the codec fixtures, the spec's
# worked examples and the shipped configurations. A decoder input starts
# with its chunking (tests/fuzz_checks/mod.rs): 00 is "all at once",
# 01 01 "one byte at a time".
seed() {
    local out name file
    out=fixtures/fuzz/decode_prolan202
    mkdir -p "$out"
    for file in fixtures/prolan202/*.txt; do
        name=$(basename "$file" .txt)
        {
            printf '\x00'
            # Data lines use \r, \n, \\ and \xHH, which printf %b reads.
            grep -v -e '^#' -e '^$' "$file" | while IFS= read -r line; do
                printf '%b' "$line"
            done
        } >"$out/fixture-$name"
    done
    { printf '\x01\x01'; tail -c +2 "$out/fixture-spec_examples"; } >"$out/spec_examples-one-byte-at-a-time"
    # shellcheck disable=SC2016 # `$` starts a line: a byte, not a variable.
    printf '\x00$Q*51\r\n$A,17*6B\r\n$A,0*57\n' >"$out/host-lines"

    out=fixtures/fuzz/decode_prolan501
    mkdir -p "$out"
    for file in fixtures/prolan501/*.hex; do
        name=$(basename "$file" .hex)
        { printf '\x00'; sed 's/#.*//' "$file" | xxd -r -p; } >"$out/fixture-$name"
    done
    { printf '\x01\x01'; tail -c +2 "$out/fixture-spec_examples"; } >"$out/spec_examples-one-byte-at-a-time"
    # QUERY, then ACK remote 301A0002 counter 258.
    printf '\x00' >"$out/host-frames"
    echo 'a5 01 81 af 97  a5 07 82 30 1a 00 02 01 02 2d 57' | xxd -r -p >>"$out/host-frames"

    out=fixtures/fuzz/config
    mkdir -p "$out"
    cp config/epm-agent.toml "$out/shipped-epm-agent.toml"
    cp config/demo.toml "$out/shipped-demo.toml"
    # broken NAME BODY: an [agent] table, then BODY (with printf %b escapes).
    broken() {
        printf '[agent]\nid = "shop-017"\ndata_dir = "/tmp/epm"\n%b' "$2" >"$out/broken-$1.toml"
    }
    broken unknown-key 'colour = "red"\n'
    printf '[agent\nid = 1\n' >"$out/broken-syntax.toml"
    printf '[agent]\nlocation = "x"\n' >"$out/broken-missing-id.toml"
    broken device '\n[[device]]\nname = "a"\nmodel = "prolan-202"\nport = "auto"\nbaud = 0\nkeymap = { 17 = "yes" }\nusb_vid = "zz"\n'
    broken sink '\n[[sink]]\nname = "s"\nkind = "http"\nurl = "http://10.0.0.1/"\ntoken = "t"\ntoken_env = "T"\n'
    broken duplicate-device '\n[[device]]\nname = "a"\nmodel = "simulator"\n\n[[device]]\nname = "a"\nmodel = "simulator"\nmin_interval_s = nan\n'
    broken baud '\n[[device]]\nname = "a"\nmodel = "prolan-501"\nport = "COM3"\nbaud = 299\nkeymap = { 1 = " " }\n'
    broken simulator '\n[[device]]\nname = "s"\nmodel = "simulator"\nsim_remotes = 1001\nsim_presses_per_min = inf\n'
    broken sinks '\n[[sink]]\nname = "f"\nkind = "file"\npath = "export"\ntimeout_s = 0\n'
    broken http-sink '\n[[sink]]\nname = "h"\nkind = "http"\nurl = "https:///batches"\n'
    broken file-sink '\n[[sink]]\nname = "f"\nkind = "file"\nformat = "ndjson"\n'
    broken auto-keys '\n[[device]]\nname = "a"\nmodel = "prolan-202"\nport = "/dev/ttyACM0"\nusb_pid = 22336\nhardware_id = "202A0F31"\n'
    broken store-and-log '\n[store]\nretention_days = 0\nmax_size_mb = 15\n\n[log]\nlevel = "epm_agent=loud"\nformat = "xml"\n'
    # Found by a run: a multi-line string as a key, whose name is a space.
    printf '""" """=A' >"$out/broken-multiline-string-key.toml"
}

if [[ "${1:-}" == seed ]]; then
    seed
    exit 0
fi

# Prints the indices, in the binary's sancov PC table, of the PCs whose
# source is the agent's own (src/), using only binutils: the table's entries
# are the R_X86_64_RELATIVE relocations inside __sancov_pcs, in order.
own_code_pcs() {
    local binary=$1 start size end
    read -r start size < <(readelf -S -W "$binary" |
        awk '{ for (i = 1; i < NF; i++) if ($i == "__sancov_pcs") print $(i + 2), $(i + 4) }')
    end=$(printf '%016x' $((16#$start + 16#$size)))
    start=$(printf '%016x' $((16#$start)))
    # Zero-padded hex compares as text; "" makes awk compare text.
    readelf -r -W "$binary" |
        awk -v start="$start" -v end="$end" '$3 == "R_X86_64_RELATIVE" &&
            ($1 "") >= start && ($1 "") < end { print $1, $4 }' |
        sort | cut -d' ' -f2 | addr2line -e "$binary" |
        awk -v own="$PWD/src/" 'index($0, own) == 1 { print NR - 1 }'
}

# Replaces the inputs a run added to fixtures/fuzz/<target>/ (the files
# named by their SHA-1, as libFuzzer names them) with at most $2 inputs, of
# that old set and of the run's corpus, that add coverage edges to the named
# seeds: first those that reach new edges in the agent's own code, most
# first, then those that add the most edges elsewhere (the toml parser...).
# So the corpus stays a fixture, not a data set (tests/it/fuzz_corpus.rs checks
# < 200 files and < 1 MiB in all).
fold_into_fixtures() {
    local target=$1 cap=$2 fixtures=fixtures/fuzz/$1 work file
    work=$(mktemp -d)
    mkdir "$work/seeds" "$work/pool"
    for file in "$fixtures"/*; do
        if [[ "$(basename "$file")" =~ ^[0-9a-f]{40}$ ]]; then
            cp "$file" "$work/pool/"
        else
            cp "$file" "$work/seeds/"
        fi
    done
    cp -n "fuzz/corpus/$target"/* "$work/pool/"
    # Edges only (-use_counters=0): hit counts would keep thousands. The
    # control file lists, per input, the PCs it covered first (again after
    # a worker restart, hence `seen`); the seeds (the first folder) go
    # first. Without FUZZ_SKIP, an input that breaks a check crashes the
    # worker, gets no coverage and is left out: the fixtures fail the
    # replay only by their crash-* files.
    env -u FUZZ_SKIP "$binaries/$target" -merge=1 -use_counters=0 \
        -merge_control_file="$work/control" "$work/seeds" "$work/pool" >"$work/merge.log" 2>&1 || true
    own_code_pcs "$binaries/$target" >"$work/own"
    awk 'FILENAME == ARGV[1] { own[$1] = 1; next }
         FNR == 1 { files = $1; next }
         FNR == 2 { seeds = $1; next }
         FNR <= files + 2 { path[FNR - 3] = $0; next }
         $1 == "COV" {
             new_own = 0; new_all = 0
             for (i = 3; i <= NF; i++) if (!($i in seen)) {
                 seen[$i] = 1; new_all++; if ($i in own) new_own++
             }
             if ($2 >= seeds && new_all > 0) print new_own, new_all, path[$2]
         }' "$work/own" "$work/control" |
        sort -k1,1nr -k2,2nr -k3 | sed -n "1,${cap}p" | cut -d' ' -f3- >"$work/picked"
    find "$fixtures" -regextype posix-extended -regex '.*/[0-9a-f]{40}' -delete
    xargs -r -d '\n' cp -t "$fixtures" <"$work/picked"
    echo "-- $target: $(wc -l <"$work/picked") inputs in $fixtures add coverage to its seeds"
    rm -rf "$work"
}

seconds=${1:-300}
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=("${targets_all[@]}")

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
fuzz=(cargo fuzz run --sanitizer none --fuzz-dir fuzz)
binaries=fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release
declare -A max_len=([decode_prolan202]=1024 [decode_prolan501]=1024 [config]=4096)
declare -A cap=([decode_prolan202]=50 [decode_prolan501]=30 [config]=70)

crashed=0
for target in "${targets[@]}"; do
    corpus=fuzz/corpus/$target
    fixtures=fixtures/fuzz/$target
    artifacts=fuzz/artifacts/$target
    mkdir -p "$corpus" "$artifacts"
    # Seeds, not the saved crashes: libFuzzer stops at a crashing seed.
    for file in "$fixtures"/*; do
        [[ "$(basename "$file")" == crash-* ]] || cp -n "$file" "$corpus"/
    done
    echo "== $target: $seconds s"
    if ! "${fuzz[@]}" "$target" "$corpus" -- \
        -max_total_time="$seconds" -max_len="${max_len[$target]}" -timeout=10 \
        -rss_limit_mb=2048 -dict="fuzz/dictionaries/$target.dict" -print_final_stats=1; then
        crashed=1
        for artifact in "$artifacts"/crash-* "$artifacts"/timeout-* "$artifacts"/oom-*; do
            [[ -e "$artifact" ]] || continue
            name=$(basename "$artifact")
            cargo fuzz tmin --sanitizer none --fuzz-dir fuzz "$target" "$artifact" \
                -r 2000 >/dev/null 2>&1 || true
            minimised=$artifacts/minimized-from-${name#*-}
            [[ -e "$minimised" ]] || minimised=$artifact
            cp "$minimised" "$fixtures/$name"
            mv "$artifact" "$artifacts/reported-$name"
            echo "!! $target: $fixtures/$name breaks an invariant; its message:"
            echo "!!   cargo test --test it fuzz_corpus::corpus_$target"
        done
    fi
    fold_into_fixtures "$target" "${cap[$target]}"
done
exit "$crashed"

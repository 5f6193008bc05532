# shellcheck shell=bash
# Sourced by scripts/local-deploy (and its test): exports the operator's own keys,
# LOCAL_KEYS, taken from the environment first, then from the file named by $1 (local.env:
# KEY=value lines, optional `export `, optional quotes around the value; comments and
# unknown keys ignored). Every key ends up exported, empty when unset. Returns 2 when only
# one of GOOGLE_CLIENT_ID / GOOGLE_CLIENT_SECRET is set (sign-in needs both).
LOCAL_KEYS=(GOOGLE_CLIENT_ID GOOGLE_CLIENT_SECRET OPENAI_API_KEY OPENAI_BASE_URL OPENAI_MODEL)

load_local_keys() {
    local file=$1 line key value known
    if [ -f "$file" ]; then
        while IFS= read -r line || [ -n "$line" ]; do
            line="${line#export }"
            case "$line" in ''|'#'*) continue ;; esac
            key="${line%%=*}"; value="${line#*=}"
            value="${value%\"}"; value="${value#\"}"; value="${value%\'}"; value="${value#\'}"
            for known in "${LOCAL_KEYS[@]}"; do
                if [ "$key" = "$known" ] && [ -z "${!key:-}" ]; then export "$key=$value"; fi
            done
        done < "$file"
    fi
    for key in "${LOCAL_KEYS[@]}"; do export "$key=${!key:-}"; done
    if { [ -n "$GOOGLE_CLIENT_ID" ] && [ -z "$GOOGLE_CLIENT_SECRET" ]; } || \
       { [ -z "$GOOGLE_CLIENT_ID" ] && [ -n "$GOOGLE_CLIENT_SECRET" ]; }; then
        echo "local-deploy: set both GOOGLE_CLIENT_ID and GOOGLE_CLIENT_SECRET, or neither" >&2
        return 2
    fi
}

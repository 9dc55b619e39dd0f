_llmproxy_completion() {
    local IFS=$'\n'
    COMPREPLY=( $( env COMP_WORDS="${COMP_WORDS[*]}" \
                   COMP_CWORD=$COMP_CWORD \
                   _LLMPROXY_COMPLETE=complete_bash $1 ) )
    if [[ ${COMPREPLY[0]} == "::llmproxy-no-files::" ]]; then
        # A key or backend name is wanted and the daemon offered none: no file names either.
        COMPREPLY=()
        compopt +o default 2>/dev/null
    fi
    return 0
}

complete -o default -F _llmproxy_completion llmproxy

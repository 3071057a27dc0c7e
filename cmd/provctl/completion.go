package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
)

// commands is provctl's command tree for shell completion: each command
// and its subcommands (none: it takes arguments or flags only). The
// dispatch in run and the usage text name the same commands; a test holds
// them together.
var commands = map[string][]string{
	"site":       {"create", "list", "show", "update", "delete"},
	"factory":    {"mint", "import", "labels", "ca"},
	"claim":      nil,
	"devices":    {"list", "configure", "show", "history", "export", "rebootstrap", "lwm2m-credentials"},
	"audit":      {"export", "verify"},
	"cert":       {"server"},
	"revoke":     nil,
	"jobs":       nil,
	"reopen":     nil,
	"backup":     nil,
	"firmware":   {"add", "list", "rollout", "pause", "resume", "abort", "pin"},
	"token":      {"create", "list", "revoke"},
	"info":       nil,
	"cluster":    {"status"},
	"completion": {"bash", "zsh", "fish"},
}

var globalFlags = []string{"--server", "--token-file", "--ca-file", "--data", "-o"}

func commandNames() []string {
	names := make([]string, 0, len(commands))
	for c := range commands {
		names = append(names, c)
	}
	slices.Sort(names)
	return names
}

// completion writes a completion script for shell.
func completion(w io.Writer, shell string) error {
	names := commandNames()
	switch shell {
	case "bash":
		var cases strings.Builder
		for _, c := range names {
			if subs := commands[c]; len(subs) > 0 {
				fmt.Fprintf(&cases, "        %s) COMPREPLY=($(compgen -W %q -- \"$cur\")); return ;;\n", c, strings.Join(subs, " "))
			}
		}
		_, err := fmt.Fprintf(w, `# provctl completion for bash: source <(provctl completion bash)
_provctl() {
    local cur="${COMP_WORDS[COMP_CWORD]}" i cmd=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${COMP_WORDS[i]}" in
            --server|--token-file|--ca-file|--data|-o) ((i++)) ;;
            -*) ;;
            *) cmd="${COMP_WORDS[i]}"; break ;;
        esac
    done
    if [[ -z "$cmd" ]]; then
        if [[ "$cur" == -* ]]; then
            COMPREPLY=($(compgen -W %q -- "$cur"))
        else
            COMPREPLY=($(compgen -W %q -- "$cur"))
        fi
        return
    fi
    if ((i + 1 == COMP_CWORD)); then
        case "$cmd" in
%s        esac
    fi
    COMPREPLY=($(compgen -f -- "$cur"))
}
complete -F _provctl provctl
`, strings.Join(globalFlags, " "), strings.Join(names, " "), cases.String())
		return err
	case "zsh":
		var cases strings.Builder
		for _, c := range names {
			if subs := commands[c]; len(subs) > 0 {
				fmt.Fprintf(&cases, "        (%s) _values subcommand %s ;;\n", c, strings.Join(subs, " "))
			}
		}
		_, err := fmt.Fprintf(w, `#compdef provctl
# provctl completion for zsh: provctl completion zsh > "${fpath[1]}/_provctl"
_provctl() {
    local -a cmds
    cmds=(%s)
    _arguments -C \
        '--server[API URL]:url:' \
        '--token-file[API token file]:file:_files' \
        '--ca-file[root CA file]:file:_files' \
        '--data[provisiond data directory]:dir:_files -/' \
        '-o[output]:format:(text json)' \
        '1:command:($cmds)' \
        '*::arg:->args'
    case $state in
    (args)
        case $words[1] in
%s        (*) _files ;;
        esac
    esac
}
compdef _provctl provctl
`, strings.Join(names, " "), cases.String())
		return err
	case "fish":
		var b strings.Builder
		b.WriteString("# provctl completion for fish: provctl completion fish > ~/.config/fish/completions/provctl.fish\n")
		b.WriteString("complete -c provctl -f\n")
		for _, f := range []struct{ long, desc string }{{"server", "API URL"}, {"token-file", "API token file"}, {"ca-file", "root CA file"}, {"data", "provisiond data directory"}} {
			fmt.Fprintf(&b, "complete -c provctl -n __fish_use_subcommand -l %s -r -d %q\n", f.long, f.desc)
		}
		b.WriteString("complete -c provctl -n __fish_use_subcommand -o o -x -a 'text json' -d 'output'\n")
		fmt.Fprintf(&b, "complete -c provctl -n __fish_use_subcommand -a %q\n", strings.Join(names, " "))
		for _, c := range names {
			if subs := commands[c]; len(subs) > 0 {
				fmt.Fprintf(&b, "complete -c provctl -n '__fish_seen_subcommand_from %s; and not __fish_seen_subcommand_from %s' -a %q\n",
					c, strings.Join(subs, " "), strings.Join(subs, " "))
			}
		}
		_, err := io.WriteString(w, b.String())
		return err
	}
	return fmt.Errorf("completion: %q: want bash, zsh or fish", shell)
}

package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/provisiond/provisiond/internal/testtools"
)

func script(t *testing.T, shell string) string {
	t.Helper()
	var out, errOut bytes.Buffer
	if err := run(t.Context(), []string{"completion", shell}, &out, &errOut); err != nil {
		t.Fatalf("completion %s: %v %s", shell, err, errOut.String())
	}
	p := filepath.Join(t.TempDir(), "provctl."+shell)
	if err := os.WriteFile(p, out.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestBashCompletion sources the script in a real bash and asks it what it
// offers.
func TestBashCompletion(t *testing.T) {
	bash := testtools.Need(t, "bash")
	p := script(t, "bash")
	for _, c := range []struct {
		line string // words typed, the last one being completed
		want string
	}{
		{"provctl si", "site"},
		{"provctl f", "factory firmware"},
		{"provctl site ", "create list show update delete"},
		{"provctl --data ./data firmware p", "pause pin"},
		{"provctl -o json audit ", "export verify"},
		{"provctl --", "--server --token-file --ca-file --data"},
		{"provctl completion ", "bash zsh fish"},
	} {
		t.Run(c.line, func(t *testing.T) {
			words := strings.Fields(c.line)
			if strings.HasSuffix(c.line, " ") {
				words = append(words, "")
			}
			quoted := make([]string, len(words))
			for i, w := range words {
				quoted[i] = "'" + w + "'"
			}
			cmd := exec.Command(bash, "-c", `source "$1"; COMP_WORDS=(`+strings.Join(quoted, " ")+`); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); _provctl; echo "${COMPREPLY[*]}"`, "bash", p)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			if got := strings.TrimSpace(string(out)); got != c.want {
				t.Errorf("completions %q, want %q", got, c.want)
			}
		})
	}
}

// TestZshAndFishCompletionParse: the shells themselves accept the scripts.
func TestZshAndFishCompletionParse(t *testing.T) {
	for _, shell := range []string{"zsh", "fish"} {
		t.Run(shell, func(t *testing.T) {
			bin := testtools.Need(t, shell)
			p := script(t, shell)
			if out, err := exec.Command(bin, "-n", p).CombinedOutput(); err != nil {
				t.Fatalf("%s -n: %v\n%s", shell, err, out)
			}
			text, _ := os.ReadFile(p)
			for _, c := range commandNames() {
				if !strings.Contains(string(text), c) {
					t.Errorf("the %s script does not offer %s", shell, c)
				}
			}
		})
	}
	var out bytes.Buffer
	if err := run(t.Context(), []string{"completion", "tcsh"}, &out, &out); err == nil {
		t.Error("completion for an unknown shell succeeded")
	}
}

// TestCompletionKnowsEveryCommand holds the completion table and the usage
// text together: each command and subcommand completed is in the usage, and
// each command the usage lists is completed.
func TestCompletionKnowsEveryCommand(t *testing.T) {
	lines := strings.Split(usage, "\n")
	listed := map[string]bool{}
	for _, l := range lines {
		if strings.HasPrefix(l, "  ") && !strings.HasPrefix(l, "   ") {
			listed[strings.Fields(l)[0]] = true
		}
	}
	for c, subs := range commands {
		if !listed[c] {
			t.Errorf("%s is completed but not in the usage", c)
		}
		for _, sub := range subs {
			found := false
			for _, l := range lines {
				if strings.HasPrefix(l, "  "+c+" ") && strings.Contains(l, sub) {
					found = true
				}
			}
			if !found {
				t.Errorf("%s %s is completed but not in the usage", c, sub)
			}
		}
	}
	for c := range listed {
		if _, ok := commands[c]; !ok {
			t.Errorf("the usage lists %s, which is not completed", c)
		}
	}
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"

	"github.com/provisiond/provisiond/internal/servertest"
	"github.com/provisiond/provisiond/simulator"
)

func TestDevsimMintsAndEnrolls(t *testing.T) {
	env := servertest.Start(t)
	env.Site("hq", "10.20.0.0/24")
	for _, args := range [][]string{
		{"--arrival", "rate", "--rate", "200", "--transport", "coap"},
		{"--arrival", "ramp", "--rate", "200", "--ramp", "100ms", "--transport", "mqtt"},
	} {
		var out, errOut bytes.Buffer
		err := run(context.Background(), append([]string{"--mint", "30", "--site", "hq", "--data", env.DataDir, "--json"}, args...), &out, &errOut)
		if err != nil {
			t.Fatalf("devsim %v: %v\n%s", args, err, errOut.String())
		}
		var sum simulator.Summary
		if err := json.Unmarshal(out.Bytes(), &sum); err != nil || sum.Enrolled != 30 || sum.Failed != 0 || sum.P99 <= 0 {
			t.Errorf("devsim %v: %+v %v\n%s", args, sum, err, out.String())
		}
	}
	for name, args := range map[string][]string{
		"neither bundles nor mint": {},
		"both":                     {"--mint", "1", "--bundles", "x"},
		"bad arrival":              {"--mint", "1", "--arrival", "flood"},
		"bad transport":            {"--mint", "1", "--transport", "zigbee"},
	} {
		var out bytes.Buffer
		if err := run(context.Background(), append(args, "--data", env.DataDir), &out, &out); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

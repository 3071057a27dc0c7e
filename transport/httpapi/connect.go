package httpapi

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// Files in a provisiond data directory that local tools read.
const (
	ServerInfoFile = "server.json" // {"api": "https://host:port", ...}
	AdminTokenFile = "admin.token"
	RootFile       = "root.pem"
)

// Connect makes a client from a server URL, a token file and a CA file, and
// fills whatever of them is empty from a provisiond data directory (default
// ./data when any is missing): what provctl and devsim do.
func Connect(server, tokenFile, caFile, dataDir string) (*Client, error) {
	if dataDir == "" && (server == "" || tokenFile == "" || caFile == "") {
		dataDir = "./data"
	}
	if dataDir != "" {
		if server == "" {
			raw, err := os.ReadFile(filepath.Join(dataDir, ServerInfoFile))
			if err != nil {
				return nil, fmt.Errorf("no server given and %s is unreadable (is provisiond running with --data %s?): %w",
					filepath.Join(dataDir, ServerInfoFile), dataDir, err)
			}
			var si struct {
				API string `json:"api"`
			}
			if err := json.Unmarshal(raw, &si); err != nil {
				return nil, fmt.Errorf("%s: %w", ServerInfoFile, err)
			}
			server = si.API
		}
		if tokenFile == "" {
			tokenFile = filepath.Join(dataDir, AdminTokenFile)
		}
		if caFile == "" {
			caFile = filepath.Join(dataDir, RootFile)
		}
	}
	token, err := os.ReadFile(tokenFile)
	if err != nil {
		return nil, fmt.Errorf("token file: %w", err)
	}
	root, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("CA file: %w", err)
	}
	return NewClient(server, string(token), root)
}

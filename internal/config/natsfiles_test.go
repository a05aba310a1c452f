package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestNATSSecretFiles: NATS_PASSWORD_FILE and NATS_TOKEN_FILE are checked
// at start, so that a wrong mount stops the program with the variable's
// name instead of failing at every reconnect.
func TestNATSSecretFiles(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "pw")
	empty := filepath.Join(dir, "empty")
	os.WriteFile(good, []byte(natsPW+"\n"), 0o600)
	os.WriteFile(empty, []byte(" \n"), 0o600)
	for _, c := range []struct {
		name string
		env  map[string]string
		want string // "" means valid
	}{
		{"password file", map[string]string{"NATS_USER": "edge", "NATS_PASSWORD_FILE": good}, ""},
		{"token file", map[string]string{"NATS_TOKEN_FILE": good}, ""},
		{"password file without user", map[string]string{"NATS_PASSWORD_FILE": good}, "NATS_PASSWORD_FILE: set NATS_USER"},
		{"password and its file", map[string]string{"NATS_USER": "edge", "NATS_PASSWORD": natsPW, "NATS_PASSWORD_FILE": good}, "NATS_PASSWORD and NATS_PASSWORD_FILE"},
		{"token and its file", map[string]string{"NATS_TOKEN": natsTok, "NATS_TOKEN_FILE": good}, "NATS_TOKEN and NATS_TOKEN_FILE"},
		{"missing password file", map[string]string{"NATS_USER": "edge", "NATS_PASSWORD_FILE": filepath.Join(dir, "absent")}, "NATS_PASSWORD_FILE"},
		{"empty token file", map[string]string{"NATS_TOKEN_FILE": empty}, "NATS_TOKEN_FILE"},
	} {
		t.Run(c.name, func(t *testing.T) {
			clearEnv(t)
			setenv(t, c.env)
			var cfg EdgeConfig
			err := Load(&cfg)
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("want valid, got %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("got %v, want an error with %q", err, c.want)
			}
			if err != nil && strings.Contains(err.Error(), natsPW) {
				t.Errorf("the error shows the secret: %v", err)
			}
		})
	}
}

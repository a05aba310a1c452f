package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestNATSUsersFile(t *testing.T) {
	clearEnv(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "users")
	hash := "$2a$11$PWIFAL8RPVp3YxQhe0Ez/.9A2Dv2.mZhV8PiDzGn3GDyFhFH8g1sO"
	content := "# trusted services\n\nbilling:" + secretA + "\n  crm : " + hash + "  \r\n"
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("NATS_USERS_FILE", path)
	var c AllInOneConfig
	if err := Load(&c); err != nil {
		t.Fatal(err)
	}
	want := map[string]Secret{"billing": secretA, "crm": Secret(hash)}
	if !reflect.DeepEqual(c.Users(), want) {
		t.Errorf("Users() has %d users, want billing and crm", len(c.Users()))
	}

	// Without the file, no users: clients are anonymous requesters.
	clearEnv(t)
	c = AllInOneConfig{}
	if err := Load(&c); err != nil || len(c.Users()) != 0 {
		t.Errorf("no NATS_USERS_FILE: %v, %d users", err, len(c.Users()))
	}

	// Bad lines name the variable and the line, never the password.
	for _, bad := range []string{
		"billing",             // no password
		"billing:",            // empty password
		":" + secretA,         // no name
		"bill ing:" + secretA, // a space in the name
		"billing:" + secretA + "\nbilling:" + secretB, // twice
	} {
		p := filepath.Join(dir, "bad")
		if err := os.WriteFile(p, []byte("# c\n"+bad+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		t.Setenv("NATS_USERS_FILE", p)
		err := Load(&AllInOneConfig{})
		checkErr(t, err, "NATS_USERS_FILE")
		if err != nil && !strings.Contains(err.Error(), "line ") {
			t.Errorf("error %q does not name a line", err)
		}
	}
	t.Setenv("NATS_USERS_FILE", filepath.Join(dir, "missing"))
	checkErr(t, Load(&AllInOneConfig{}), "NATS_USERS_FILE")
}

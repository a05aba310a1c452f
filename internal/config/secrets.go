package config

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/wxlogin/wxlogin/internal/protocol"
)

// Secret is a string that never prints: logging a config cannot leak it.
type Secret string

func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return "[redacted]"
}

// LogValue keeps slog from printing the value.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// GoString keeps %#v from printing the value.
func (s Secret) GoString() string { return strconv.Quote(s.String()) }

// MarshalJSON keeps JSON, and so slog's JSON handler logging a config
// struct, from printing the value.
func (s Secret) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// Apps maps appid to AppSecret. It prints appids only.
type Apps map[string]Secret

// Decode parses WX_APPS: appid:secret[,appid:secret...]. Errors name the
// entry by position, never by content, since the content is a secret.
func (a *Apps) Decode(value string) error {
	apps := Apps{}
	for i, pair := range strings.Split(value, ",") {
		pair = strings.TrimSpace(pair)
		if pair == "" {
			continue
		}
		if err := apps.add(pair); err != nil {
			return fmt.Errorf("entry %d: %w", i+1, err)
		}
	}
	*a = apps
	return nil
}

func (a Apps) add(pair string) error {
	appid, secret, ok := strings.Cut(pair, ":")
	appid, secret = strings.TrimSpace(appid), strings.TrimSpace(secret)
	if !ok || appid == "" || secret == "" {
		return errors.New("want appid:secret")
	}
	if !protocol.ValidToken(appid) {
		return errors.New("appid must be printable ASCII without spaces")
	}
	if old, dup := a[appid]; dup && old != Secret(secret) {
		return fmt.Errorf("appid %s is given twice with different secrets", appid)
	}
	a[appid] = Secret(secret)
	return nil
}

// addFile adds the pairs of WX_APPS_FILE, one per line; blank lines and
// lines starting with # are skipped.
func (a *Apps) addFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("WX_APPS_FILE: %w", err)
	}
	defer f.Close()
	if *a == nil {
		*a = Apps{}
	}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if err := a.add(line); err != nil {
			return fmt.Errorf("WX_APPS_FILE line %d: %w", n, err)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("WX_APPS_FILE: %w", err)
	}
	return nil
}

// PlaceholderPrefix starts every secret the shipped manifests and
// example files leave for the operator to fill in.
const PlaceholderPrefix = "CHANGE-ME"

// placeholder refuses a secret still set to a shipped placeholder, so
// that a stack started before its secrets were filled in stops at once
// instead of running with a password printed in the repository. The
// error names the variable, never the value.
func placeholder(name, value string) error {
	if strings.HasPrefix(strings.ToUpper(strings.TrimSpace(value)), PlaceholderPrefix) {
		return fmt.Errorf("%s: still a %s… placeholder; set the real secret", name, PlaceholderPrefix)
	}
	return nil
}

// placeholders refuses any AppSecret that is still a placeholder, naming
// its appid (not secret) and the variable it came from.
func (a Apps) placeholders(name string) error {
	var errs []error
	for _, id := range a.IDs() {
		if err := placeholder(name, string(a[id])); err != nil {
			errs = append(errs, fmt.Errorf("appid %s: %w", id, err))
		}
	}
	return errors.Join(errs...)
}

// IDs returns the appids, sorted.
func (a Apps) IDs() []string {
	ids := make([]string, 0, len(a))
	for id := range a {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

func (a Apps) String() string { return strings.Join(a.IDs(), ",") }

// LogValue prints appids only.
func (a Apps) LogValue() slog.Value { return slog.StringValue(a.String()) }

// readUsers reads NATS_USERS_FILE: user:password lines, the password in
// clear or a bcrypt hash ($2a$..., from `nats server passwd`); blank lines
// and lines starting with # are skipped. Errors name the line, never the
// password.
func readUsers(path string) (map[string]Secret, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("NATS_USERS_FILE: %w", err)
	}
	defer f.Close()
	users := map[string]Secret{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, pw, ok := strings.Cut(line, ":")
		name, pw = strings.TrimSpace(name), strings.TrimSpace(pw)
		switch {
		case !ok || name == "" || pw == "":
			return nil, fmt.Errorf("NATS_USERS_FILE line %d: want user:password", n)
		case !protocol.ValidToken(name):
			return nil, fmt.Errorf("NATS_USERS_FILE line %d: a user name is printable ASCII without spaces", n)
		case users[name] != "":
			return nil, fmt.Errorf("NATS_USERS_FILE line %d: user %s is given twice", n, name)
		}
		users[name] = Secret(pw)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("NATS_USERS_FILE: %w", err)
	}
	return users, nil
}

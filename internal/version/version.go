// Package version tells which build is running, for the micro service's
// version field, logs and -version flags.
package version

import (
	"regexp"
	"runtime/debug"
)

// Set at link time with -ldflags "-X github.com/wxlogin/wxlogin/internal/version.version=1.2.3".
var version = ""

var semver = regexp.MustCompile(`^v?(\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?)`)

// Version returns a semantic version (micro services require one): the
// link-time value, else the module version from build info, else 0.0.0-dev.
func Version() string {
	if m := semver.FindStringSubmatch(version); m != nil {
		return m[1]
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if m := semver.FindStringSubmatch(bi.Main.Version); m != nil {
			return m[1]
		}
	}
	return "0.0.0-dev"
}

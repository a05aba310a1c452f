package dev_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestProductLinksNoTooling: the product binaries link neither package
// testing nor anything under internal/dev, so test-only code cannot ship.
func TestProductLinksNoTooling(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to list the binaries' dependencies: %v", err)
	}
	const module = "github.com/wxlogin/wxlogin"
	cmd := exec.Command(goTool, "list", "-deps",
		module+"/cmd/wxlogin", module+"/cmd/edge", module+"/cmd/worker", module+"/cmd/fakewx")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list -deps listed only %q", deps)
	}
	for _, pkg := range deps {
		if pkg == "testing" || strings.HasPrefix(pkg, "testing/") || strings.HasPrefix(pkg, module+"/internal/dev") {
			t.Errorf("a product binary links %s", pkg)
		}
	}
}

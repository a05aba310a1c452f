package deploy

// The shipped manifests use the settings deploy/README.md recommends
// (issue 14): codes only in POST bodies, a short answer lifetime, a
// client limit and a pool-wide WeChat rate, /metrics off the public port,
// TLS to NATS, and no start while a secret is a placeholder.

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"path"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wxlogin/wxlogin/internal/config"
)

// publicFileVars name files that are not secret (certificates to
// trust): they come from any mounted volume, not only from secrets.
var publicFileVars = map[string]bool{"NATS_TLS_CA": true, "WX_CA_FILE": true}

// underVolume reports whether a compose service mounts a volume or file
// at p or a directory holding it.
func underVolume(svc map[string]any, p string) bool {
	for _, v := range list(svc["volumes"]) {
		parts := strings.Split(v.(string), ":")
		if len(parts) < 2 {
			continue
		}
		target := parts[1]
		if p == target || strings.HasPrefix(p, strings.TrimSuffix(target, "/")+"/") {
			return true
		}
	}
	return false
}

// allContainers is every wxlogin container of Compose and Kubernetes.
func allContainers(t *testing.T) []container {
	compose, _ := composeContainers(t)
	k8s, _ := k8sContainers(t)
	return append(compose, k8s...)
}

func TestRecommendedSettings(t *testing.T) {
	for _, c := range allContainers(t) {
		env := c.env
		if c.binary == "edge" || c.binary == "worker" {
			for _, u := range strings.Split(env["NATS_URL"], ",") {
				if !strings.HasPrefix(u, "tls://") {
					t.Errorf("%s: NATS_URL %s is not tls://", c.where, u)
				}
			}
			if env["NATS_TLS_CA"] == "" {
				t.Errorf("%s: no NATS_TLS_CA to verify the NATS servers", c.where)
			}
		}
		switch c.binary {
		case "edge":
			if env["EDGE_ALLOW_GET"] != "false" {
				t.Errorf("%s: EDGE_ALLOW_GET=%q, want false (codes in URLs reach access logs)", c.where, env["EDGE_ALLOW_GET"])
			}
			if r, err := strconv.ParseFloat(env["EDGE_CLIENT_RATE"], 64); err != nil || r <= 0 {
				t.Errorf("%s: EDGE_CLIENT_RATE=%q, want a positive rate", c.where, env["EDGE_CLIENT_RATE"])
			}
			_, pub, _ := net.SplitHostPort(env["EDGE_ADDR"])
			_, met, err := net.SplitHostPort(env["EDGE_METRICS_ADDR"])
			if err != nil || met == pub {
				t.Errorf("%s: EDGE_METRICS_ADDR=%q, want a port apart from EDGE_ADDR's", c.where, env["EDGE_METRICS_ADDR"])
			}
		case "worker":
			if d, err := time.ParseDuration(env["WX_RESULT_TTL"]); err != nil || d > 2*time.Minute {
				t.Errorf("%s: WX_RESULT_TTL=%q, want a short one (the README recommends 1m)", c.where, env["WX_RESULT_TTL"])
			}
			if r, err := strconv.ParseFloat(env["WX_RATE"], 64); err != nil || r <= 0 {
				t.Errorf("%s: WX_RATE=%q, want the pool-wide WeChat rate set", c.where, env["WX_RATE"])
			}
			if u := env["WX_API_BASE"]; strings.HasPrefix(u, "http://") {
				t.Errorf("%s: WX_API_BASE=%s sends the AppSecret in clear", c.where, u)
			}
		}
	}
}

// TestMetricsOffThePublicPort: Prometheus scrapes the edge's metrics
// port; the published port (Compose) and the Service the Ingress routes
// to (Kubernetes) are the public port alone.
func TestMetricsOffThePublicPort(t *testing.T) {
	compose := docs(t, "compose.yaml")[0]
	edgeSvc := compose["services"].(map[string]any)["edge"].(map[string]any)
	env := envMap(t, edgeSvc["environment"])
	_, met, _ := net.SplitHostPort(env["EDGE_METRICS_ADDR"])
	for _, p := range list(edgeSvc["ports"]) {
		if strings.HasSuffix(p.(string), ":"+met) {
			t.Errorf("compose publishes the edge's metrics port: %s", p)
		}
	}
	prom, err := os.ReadFile("prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(prom), `"edge:`+met+`"`) {
		t.Errorf("prometheus.yml does not scrape edge:%s", met)
	}

	var pubPort, metPort, annotated string
	for _, d := range docs(t, "k8s/edge.yaml") {
		if d["kind"] != "Deployment" {
			continue
		}
		tmpl := d["spec"].(map[string]any)["template"].(map[string]any)
		annotated = str(tmpl, "metadata", "annotations", "prometheus.io/port")
		for _, c := range list(tmpl["spec"].(map[string]any)["containers"]) {
			for _, p := range list(c.(map[string]any)["ports"]) {
				p := p.(map[string]any)
				switch p["name"] {
				case "http":
					pubPort = strconv.Itoa(p["containerPort"].(int))
				case "metrics":
					metPort = strconv.Itoa(p["containerPort"].(int))
				}
			}
		}
	}
	k8sEdge, _ := k8sContainers(t)
	for _, c := range k8sEdge {
		if c.binary != "edge" {
			continue
		}
		if _, p, _ := net.SplitHostPort(c.env["EDGE_METRICS_ADDR"]); p != metPort || metPort == "" {
			t.Errorf("k8s edge: EDGE_METRICS_ADDR %s is not the metrics containerPort %s", c.env["EDGE_METRICS_ADDR"], metPort)
		}
		if _, p, _ := net.SplitHostPort(c.env["EDGE_ADDR"]); p != pubPort {
			t.Errorf("k8s edge: EDGE_ADDR %s is not the http containerPort %s", c.env["EDGE_ADDR"], pubPort)
		}
	}
	if annotated != metPort {
		t.Errorf("k8s edge: prometheus.io/port %q, want the metrics port %s", annotated, metPort)
	}
	// The Service the Ingress names exposes the public port alone.
	services := map[string]map[string]any{}
	for _, d := range docs(t, "k8s/edge.yaml") {
		if d["kind"] == "Service" {
			services[str(d, "metadata", "name")] = d
		}
	}
	backends := 0
	for _, d := range docs(t, "k8s/ingress.yaml") {
		if d["kind"] != "Ingress" {
			continue
		}
		for _, r := range list(d["spec"].(map[string]any)["rules"]) {
			for _, p := range list(str2map(r, "http")["paths"]) {
				svc := str2map(str2map(p, "backend"), "service")
				name := svc["name"].(string)
				backends++
				s, ok := services[name]
				if !ok {
					t.Fatalf("the Ingress routes to %s, which edge.yaml does not define", name)
				}
				for _, sp := range list(s["spec"].(map[string]any)["ports"]) {
					sp := sp.(map[string]any)
					if tp := sp["targetPort"]; tp != "http" && tp != pubPort {
						t.Errorf("Service %s behind the Ingress exposes target port %v, not only the public one", name, tp)
					}
				}
			}
		}
	}
	if backends == 0 {
		t.Error("k8s/ingress.yaml routes nowhere")
	}
}

func str2map(v any, key string) map[string]any {
	m, _ := v.(map[string]any)
	out, _ := m[key].(map[string]any)
	return out
}

// TestPlaceholdersRefused: every placeholder secret the repository ships
// is one the binaries refuse, and the Compose NATS servers refuse theirs
// before nats-server starts.
func TestPlaceholdersRefused(t *testing.T) {
	var placeholders []string
	f, err := os.Open("example.env")
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if _, v, ok := strings.Cut(sc.Text(), "="); ok && strings.HasPrefix(v, "CHANGE-ME") {
			placeholders = append(placeholders, v)
		}
	}
	f.Close()
	for _, d := range docs(t, "k8s/secrets.yaml") {
		data, _ := d["stringData"].(map[string]any)
		for k, v := range data {
			if strings.HasSuffix(k, "password") {
				placeholders = append(placeholders, v.(string))
			}
		}
	}
	if len(placeholders) < 6 {
		t.Fatalf("found only %d placeholders", len(placeholders))
	}
	for _, pw := range placeholders {
		t.Setenv("NATS_USER", "edge")
		t.Setenv("NATS_PASSWORD", pw)
		err := config.Load(&config.EdgeConfig{})
		if err == nil || !strings.Contains(err.Error(), "NATS_PASSWORD") || strings.Contains(err.Error(), pw) {
			t.Errorf("the edge with a placeholder password: %v", err)
		}
	}
	os.Unsetenv("NATS_PASSWORD")

	// The app secret placeholder of secrets.yaml, through WX_APPS_FILE.
	for _, d := range docs(t, "k8s/secrets.yaml") {
		apps, ok := d["stringData"].(map[string]any)["apps"].(string)
		if !ok {
			continue
		}
		file := path.Join(t.TempDir(), "apps")
		os.WriteFile(file, []byte(apps), 0o600)
		t.Setenv("WX_APPS_FILE", file)
		t.Setenv("NATS_USER", "")
		err := config.Load(&config.WorkerConfig{})
		if err == nil || !strings.Contains(err.Error(), "WX_APPS_FILE") {
			t.Errorf("the worker with the placeholder apps: %v", err)
		}
	}

	// The Compose NATS servers' start script, run by a real shell.
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh to run the NATS start script")
	}
	nats := docs(t, "compose.yaml")[0]["x-nats"].(map[string]any)
	script := strings.ReplaceAll(list(nats["command"])[0].(string), "$$", "$")
	good := map[string]string{"EDGE_PASSWORD": "a-real-one", "WORKER_PASSWORD": "another", "SERVICE_PASSWORD": "third"}
	for v := range good {
		env := []string{"PATH=/nonexistent"}
		for k, val := range good {
			if k == v {
				val = "CHANGE-ME-" + strings.ToLower(k)
			}
			env = append(env, k+"="+val)
		}
		cmd := exec.Command(sh, "-c", script)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if code := cmd.ProcessState.ExitCode(); code != 1 || !strings.Contains(string(out), "placeholder") {
			t.Errorf("%s a placeholder: exit %d (%v) %q, want 1 and a message", v, code, err, out)
		}
	}
	// With real passwords it goes on to exec nats-server (absent here: 127).
	cmd := exec.Command(sh, "-c", script)
	for k, val := range good {
		cmd.Env = append(cmd.Env, k+"="+val)
	}
	cmd.Env = append(cmd.Env, "PATH=/nonexistent")
	out, _ := cmd.CombinedOutput()
	if code := cmd.ProcessState.ExitCode(); code != 127 {
		t.Errorf("real passwords: exit %d %q, want 127 (nats-server not found, so the check passed)", code, out)
	}
}

package deploy

// What CI can check of deploy/ without a Docker engine or a cluster.

import (
	"bytes"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/wxlogin/wxlogin/internal/config"
)

// configs maps each binary in the image to its configuration struct.
var configs = map[string]any{
	"edge":    config.EdgeConfig{},
	"worker":  config.WorkerConfig{},
	"wxlogin": config.AllInOneConfig{},
	"fakewx":  config.FakeWXConfig{},
}

// runtimeVars are read by the Go runtime, not by internal/config.
var runtimeVars = []string{"GOMAXPROCS", "GOMEMLIMIT", "GOGC", "GODEBUG"}

// notInImage are the binaries under cmd/ that the image leaves out, and why.
var notInImage = map[string]string{
	"wxbench": "a benchmark tool for developers, not a production process",
	"soak":    "a long-running stability test for developers, not a production process",
}

// envNames returns the variables of a config struct's envconfig tags,
// embedded sections included.
func envNames(t reflect.Type, out map[string]bool) map[string]bool {
	if out == nil {
		out = map[string]bool{}
	}
	for i := range t.NumField() {
		f := t.Field(i)
		if name := f.Tag.Get("envconfig"); name != "" {
			out[name] = true
		} else if f.Anonymous && f.Type.Kind() == reflect.Struct {
			envNames(f.Type, out)
		}
	}
	return out
}

// knownVars is what binary reads from its environment.
func knownVars(t *testing.T, binary string) map[string]bool {
	t.Helper()
	spec, ok := configs[binary]
	if !ok {
		t.Fatalf("%q is not a binary of the image", binary)
	}
	names := envNames(reflect.TypeOf(spec), nil)
	for _, v := range runtimeVars {
		names[v] = true
	}
	return names
}

// yamlFiles lists every YAML file under deploy/.
func yamlFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if ext := filepath.Ext(p); !d.IsDir() && (ext == ".yaml" || ext == ".yml") {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no YAML under deploy/")
	}
	return files
}

// docs decodes every document of a YAML file.
func docs(t *testing.T, file string) []map[string]any {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]any
	dec := yaml.NewDecoder(f)
	for {
		var doc map[string]any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if doc != nil {
			out = append(out, doc)
		}
	}
}

// TestYAMLParses: every YAML file parses; every Kubernetes manifest says
// what it is, and kustomization.yaml lists each of them.
func TestYAMLParses(t *testing.T) {
	for _, file := range yamlFiles(t) {
		if len(docs(t, file)) == 0 {
			t.Errorf("%s: no document", file)
		}
	}
	kust := docs(t, "k8s/kustomization.yaml")[0]
	listed := map[string]bool{}
	for _, r := range list(kust["resources"]) {
		listed[r.(string)] = true
	}
	manifests, _ := filepath.Glob("k8s/*.yaml")
	for _, m := range manifests {
		base := filepath.Base(m)
		if base == "kustomization.yaml" || base == "nats-values.yaml" {
			continue
		}
		if !listed[base] {
			t.Errorf("%s is not in kustomization.yaml's resources", m)
		}
		delete(listed, base)
		for i, d := range docs(t, m) {
			if d["apiVersion"] == nil || d["kind"] == nil || str(d, "metadata", "name") == "" {
				t.Errorf("%s document %d: want apiVersion, kind and metadata.name", m, i+1)
			}
		}
	}
	for r := range listed {
		t.Errorf("kustomization.yaml lists %s, which does not exist", r)
	}
}

// container is one wxlogin process in a manifest.
type container struct {
	where  string
	binary string
	env    map[string]string // name → value ("" when from a reference)
}

// composeContainers returns compose.yaml's services that run the
// wxlogin image, and the others (NATS, Prometheus) by name.
func composeContainers(t *testing.T) ([]container, map[string]map[string]any) {
	t.Helper()
	compose := docs(t, "compose.yaml")[0]
	var ours []container
	others := map[string]map[string]any{}
	for name, s := range compose["services"].(map[string]any) {
		svc := s.(map[string]any)
		image, _ := svc["image"].(string)
		if !strings.HasPrefix(image, "wxlogin:") {
			others[name] = svc
			continue
		}
		binary := "wxlogin" // the image's entrypoint
		if ep := list(svc["entrypoint"]); len(ep) > 0 {
			binary = path.Base(ep[0].(string))
		}
		c := container{where: "compose.yaml service " + name, binary: binary, env: map[string]string{}}
		for k, v := range envMap(t, svc["environment"]) {
			c.env[k] = v
		}
		ours = append(ours, c)
	}
	return ours, others
}

// envMap reads compose's environment, in either of its forms.
func envMap(t *testing.T, v any) map[string]string {
	t.Helper()
	out := map[string]string{}
	switch env := v.(type) {
	case nil:
	case map[string]any:
		for k, v := range env {
			out[k] = fmt.Sprint(v)
		}
	case []any:
		for _, kv := range env {
			k, v, _ := strings.Cut(kv.(string), "=")
			out[k] = v
		}
	default:
		t.Fatalf("environment of unexpected shape %T", v)
	}
	return out
}

// k8sContainers returns the containers of the Deployments that run the
// wxlogin image, with their pod specs.
func k8sContainers(t *testing.T) ([]container, []map[string]any) {
	t.Helper()
	var ours []container
	var pods []map[string]any
	manifests, _ := filepath.Glob("k8s/*.yaml")
	for _, m := range manifests {
		if filepath.Base(m) == "nats-values.yaml" {
			continue
		}
		for _, d := range docs(t, m) {
			if d["kind"] != "Deployment" {
				continue
			}
			pod := d["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)
			for _, c := range list(pod["containers"]) {
				c := c.(map[string]any)
				if image, _ := c["image"].(string); image != "wxlogin" && !strings.HasPrefix(image, "wxlogin:") {
					continue
				}
				binary := "wxlogin"
				if cmd := list(c["command"]); len(cmd) > 0 {
					binary = path.Base(cmd[0].(string))
				}
				ct := container{where: fmt.Sprintf("%s Deployment %s container %s", m, str(d, "metadata", "name"), c["name"]), binary: binary, env: map[string]string{}}
				for _, e := range list(c["env"]) {
					e := e.(map[string]any)
					v, _ := e["value"].(string)
					ct.env[e["name"].(string)] = v
				}
				ours = append(ours, ct)
				pods = append(pods, pod)
			}
		}
	}
	if len(ours) == 0 {
		t.Fatal("no Deployment runs the wxlogin image")
	}
	return ours, pods
}

// TestEnvNamesExist: every variable the manifests give a wxlogin binary is
// one that binary reads. A misspelt or removed name would otherwise be
// ignored in silence, and the setting never applied.
func TestEnvNamesExist(t *testing.T) {
	compose, _ := composeContainers(t)
	k8s, _ := k8sContainers(t)
	seen := map[string]bool{}
	for _, c := range append(compose, k8s...) {
		seen[c.binary] = true
		known := knownVars(t, c.binary)
		for name := range c.env {
			if !known[name] {
				t.Errorf("%s sets %s, which %s does not read (internal/config)", c.where, name, c.binary)
			}
		}
	}
	for _, b := range []string{"edge", "worker"} {
		if !seen[b] {
			t.Errorf("no manifest runs the %s", b)
		}
	}
}

// TestSecretFilesAreMounted: each *_FILE variable points into a secret
// the container mounts, so the binary does not stop at start for a
// missing file.
func TestSecretFilesAreMounted(t *testing.T) {
	doc := docs(t, "compose.yaml")[0]
	defined := doc["secrets"].(map[string]any)
	for name, s := range doc["services"].(map[string]any) {
		svc := s.(map[string]any)
		mounted := map[string]bool{}
		for _, sec := range list(svc["secrets"]) {
			if defined[sec.(string)] == nil {
				t.Errorf("compose service %s uses secret %s, which is not defined", name, sec)
			}
			mounted[sec.(string)] = true
		}
		for k, v := range envMap(t, svc["environment"]) {
			if publicFileVars[k] {
				if !underVolume(svc, v) {
					t.Errorf("compose service %s: %s=%s is not in a volume it mounts", name, k, v)
				}
				continue
			}
			if strings.HasSuffix(k, "_FILE") {
				sec, ok := strings.CutPrefix(v, "/run/secrets/")
				if !ok || !mounted[sec] {
					t.Errorf("compose service %s: %s=%s is not a secret it mounts", name, k, v)
				}
			}
		}
	}

	secretKeys := k8sSecretKeys(t)
	containers, pods := k8sContainers(t)
	for i, c := range containers {
		pod := pods[i]
		files := map[string]bool{} // paths the secret volumes provide
		for _, v := range list(pod["volumes"]) {
			v := v.(map[string]any)
			sec, ok := v["secret"].(map[string]any)
			if !ok {
				continue
			}
			secretName := sec["secretName"].(string)
			keys := secretKeys[secretName]
			if keys == nil {
				t.Errorf("%s: volume %s uses Secret %s, which secrets.yaml does not define", c.where, v["name"], secretName)
			}
			paths := map[string]string{} // file name → key
			if items := list(sec["items"]); len(items) > 0 {
				for _, it := range items {
					it := it.(map[string]any)
					paths[it["path"].(string)] = it["key"].(string)
				}
			} else {
				for k := range keys {
					paths[k] = k
				}
			}
			for p, key := range paths {
				if !keys[key] {
					t.Errorf("%s: Secret %s has no key %s", c.where, secretName, key)
				}
				for _, ctr := range list(pod["containers"]) {
					for _, vm := range list(ctr.(map[string]any)["volumeMounts"]) {
						vm := vm.(map[string]any)
						if vm["name"] == v["name"] {
							files[path.Join(vm["mountPath"].(string), p)] = true
						}
					}
				}
			}
		}
		for k, v := range c.env {
			if (strings.HasSuffix(k, "_FILE") || publicFileVars[k]) && !files[v] {
				t.Errorf("%s: %s=%s is not a file of a mounted Secret", c.where, k, v)
			}
		}
	}
}

// k8sSecretKeys returns the keys of each Secret in secrets.yaml.
func k8sSecretKeys(t *testing.T) map[string]map[string]bool {
	t.Helper()
	out := map[string]map[string]bool{}
	for _, d := range docs(t, "k8s/secrets.yaml") {
		if d["kind"] != "Secret" {
			continue
		}
		keys := map[string]bool{}
		for _, field := range []string{"stringData", "data"} {
			if m, ok := d[field].(map[string]any); ok {
				for k := range m {
					keys[k] = true
				}
			}
		}
		out[str(d, "metadata", "name")] = keys
	}
	return out
}

// natsVarRe finds the variable references of a NATS config: an unquoted
// value that starts with $ (inside quotes, $SRV and $JS are subjects).
var natsVarRe = regexp.MustCompile(`(?m)^[^#"\n]*[:=]\s*\$([A-Za-z_][A-Za-z0-9_]*)\s*$`)

// TestNATSConfigsAgree: the Kubernetes values carry accounts.conf
// verbatim, and every variable the NATS configs refer to is set for the
// NATS servers, in Compose and in the Helm values.
func TestNATSConfigsAgree(t *testing.T) {
	accounts, err := os.ReadFile("nats/accounts.conf")
	if err != nil {
		t.Fatal(err)
	}
	values := docs(t, "k8s/nats-values.yaml")[0]
	data, _ := values["configMap"].(map[string]any)["merge"].(map[string]any)["data"].(map[string]any)
	if got, _ := data["accounts.conf"].(string); got != string(accounts) {
		t.Errorf("k8s/nats-values.yaml's accounts.conf differs from nats/accounts.conf; copy the file into it again")
	}
	if inc := str(values, "config", "merge", "$include"); inc != "accounts.conf" {
		t.Errorf("k8s/nats-values.yaml does not include accounts.conf (config.merge.$include = %q)", inc)
	}

	var refs []string
	for _, f := range []string{"nats/nats.conf", "nats/accounts.conf"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range natsVarRe.FindAllStringSubmatch(string(b), -1) {
			refs = append(refs, m[1])
		}
	}
	sort.Strings(refs)
	refs = slices.Compact(refs)
	if len(refs) < 4 {
		t.Fatalf("found only %v as variable references in nats/*.conf", refs)
	}

	_, services := composeContainers(t)
	natsServices := 0
	for name, svc := range services {
		if image, _ := svc["image"].(string); !strings.HasPrefix(image, "nats:") {
			continue
		}
		natsServices++
		env := envMap(t, svc["environment"])
		for _, v := range refs {
			if _, ok := env[v]; !ok {
				t.Errorf("compose.yaml service %s does not set %s, which nats/*.conf refers to", name, v)
			}
		}
	}
	if natsServices != 3 {
		t.Errorf("compose.yaml runs %d NATS servers, want a cluster of 3", natsServices)
	}

	env, _ := values["container"].(map[string]any)["env"].(map[string]any)
	secretKeys := k8sSecretKeys(t)
	for _, v := range refs {
		if v == "NATS_SERVER_NAME" {
			continue // nats.conf is Compose's; the chart names its servers itself
		}
		e, ok := env[v].(map[string]any)
		if !ok {
			t.Errorf("k8s/nats-values.yaml container.env does not set %s, which accounts.conf refers to", v)
			continue
		}
		name, key := str(e, "valueFrom", "secretKeyRef", "name"), str(e, "valueFrom", "secretKeyRef", "key")
		if !secretKeyUsable(secretKeys, name, key) {
			t.Errorf("k8s/nats-values.yaml: %s comes from Secret %s key %s, which secrets.yaml does not define", v, name, key)
		}
	}
}

func secretKeyUsable(keys map[string]map[string]bool, name, key string) bool {
	return keys[name] != nil && keys[name][key]
}

// TestDockerfileBuildsTheBinaries: the image's build command builds
// exactly the four binaries, statically, with the version where
// internal/version reads it; the final stage is distroless and nonroot
// with an exec-form entrypoint; and the command really builds.
func TestDockerfileBuildsTheBinaries(t *testing.T) {
	df, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	instrs := dockerInstructions(string(df))
	var build []string
	for _, in := range instrs {
		if in.op == "RUN" && strings.Contains(in.args, "go build") {
			if build != nil {
				t.Fatal("more than one RUN with go build")
			}
			build = shellWords(in.args)
		}
	}
	if build == nil {
		t.Fatal("no RUN with go build")
	}
	// Skip RUN's --mount flags and take the environment assignments.
	for len(build) > 0 && strings.HasPrefix(build[0], "--") {
		build = build[1:]
	}
	env := map[string]string{}
	for len(build) > 0 && strings.Contains(build[0], "=") {
		k, v, _ := strings.Cut(build[0], "=")
		env[k] = v
		build = build[1:]
	}
	if env["CGO_ENABLED"] != "0" {
		t.Errorf("the build does not set CGO_ENABLED=0: the binaries would not be static")
	}
	if len(build) < 2 || build[0] != "go" || build[1] != "build" {
		t.Fatalf("the build command is %q, want go build ...", build)
	}
	args := build[2:]
	var pkgs []string
	var out, ldflags string
	trimpath := false
	for i := 0; i < len(args); i++ {
		switch a := args[i]; {
		case a == "-trimpath":
			trimpath = true
		case a == "-o" && i+1 < len(args):
			i++
			out = args[i]
		case a == "-ldflags" && i+1 < len(args):
			i++
			ldflags = args[i]
		case strings.HasPrefix(a, "-"):
			t.Errorf("go build flag %s: this test does not know it", a)
		default:
			pkgs = append(pkgs, a)
		}
	}
	if !trimpath {
		t.Error("go build without -trimpath: local paths would be in the binaries")
	}
	if !strings.HasSuffix(out, "/") {
		t.Errorf("go build -o %q: want a directory (ending in /) for several packages", out)
	}
	const versionVar = "github.com/wxlogin/wxlogin/internal/version.version"
	if !strings.Contains(ldflags, "-X "+versionVar+"=") || !strings.Contains(ldflags, "-s -w") {
		t.Errorf("-ldflags %q: want -s -w -X %s=...", ldflags, versionVar)
	}
	checkVersionVar(t)

	// Exactly the four, and a decision for every other binary under cmd/.
	want := []string{"./cmd/edge", "./cmd/fakewx", "./cmd/worker", "./cmd/wxlogin"}
	sorted := slices.Sorted(slices.Values(pkgs))
	if !slices.Equal(sorted, want) {
		t.Errorf("the image builds %v, want %v", sorted, want)
	}
	cmds, _ := filepath.Glob("../cmd/*")
	for _, dir := range cmds {
		name := filepath.Base(dir)
		if !slices.Contains(pkgs, "./cmd/"+name) && notInImage[name] == "" {
			t.Errorf("cmd/%s is neither built into the image nor listed in notInImage with a reason", name)
		}
	}

	// The final stage.
	var last []dockerInstr
	for i, in := range instrs {
		if in.op == "FROM" {
			last = instrs[i:]
		}
	}
	if len(last) == 0 || !strings.HasPrefix(last[0].args, "gcr.io/distroless/static-debian12:nonroot") {
		t.Errorf("the final stage is %q, want gcr.io/distroless/static-debian12:nonroot", last[0].args)
	}
	var entrypoint string
	copied := false
	for _, in := range last {
		switch in.op {
		case "ENTRYPOINT":
			entrypoint = in.args
		case "COPY":
			copied = copied || strings.Contains(in.args, "--from=build "+out)
		case "USER":
			if strings.HasPrefix(in.args, "root") || strings.HasPrefix(in.args, "0") {
				t.Errorf("USER %s", in.args)
			}
		}
	}
	if !copied {
		t.Errorf("the final stage does not COPY --from=build %s", out)
	}
	if !strings.HasPrefix(entrypoint, `["/usr/local/bin/`) {
		t.Errorf("ENTRYPOINT %s: want the exec form of a binary in /usr/local/bin", entrypoint)
	}

	// And it builds. First the exact command as a dry run (-n), which
	// resolves every package with cgo off, then a real build of the same
	// packages with the same -ldflags. The real one leaves out -trimpath
	// and CGO_ENABLED=0 only because those make every dependency compile
	// afresh (well over a minute on a cold cache); with them, the build
	// reuses what go vet and go build ./... compiled.
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH")
	}
	dir := t.TempDir()
	ldflags = strings.ReplaceAll(ldflags, "${VERSION}", "0.0.0-deploytest")
	exact := []string{"build", "-n", "-trimpath", "-ldflags", ldflags, "-o", dir + "/"}
	run(t, goBin, append(exact, pkgs...), "CGO_ENABLED=0")
	run(t, goBin, append([]string{"build", "-ldflags", ldflags, "-o", dir + "/"}, pkgs...))
	for _, p := range pkgs {
		if fi, err := os.Stat(filepath.Join(dir, path.Base(p))); err != nil || fi.Size() == 0 {
			t.Errorf("go build made no %s: %v", path.Base(p), err)
		}
	}
}

func run(t *testing.T, goBin string, args []string, env ...string) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), goBin, args...)
	cmd.Dir = ".." // the module root, the image's build context
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
}

// checkVersionVar: the linker ignores -X for a variable that does not
// exist, so a rename would silently leave every image at 0.0.0-dev.
func checkVersionVar(t *testing.T) {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "../internal/version/version.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range f.Decls {
		gd, ok := d.(*ast.GenDecl)
		if !ok || gd.Tok != token.VAR {
			continue
		}
		for _, s := range gd.Specs {
			for _, n := range s.(*ast.ValueSpec).Names {
				if n.Name == "version" {
					return
				}
			}
		}
	}
	t.Error("internal/version has no package variable version for -ldflags -X")
}

type dockerInstr struct{ op, args string }

// dockerInstructions splits a Dockerfile into instructions, joining
// continuation lines and dropping comments.
func dockerInstructions(src string) []dockerInstr {
	var out []dockerInstr
	var cur strings.Builder
	for _, line := range strings.Split(src, "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && cur.Len() == 0) {
			continue
		}
		if s, ok := strings.CutSuffix(trimmed, `\`); ok {
			cur.WriteString(s + " ")
			continue
		}
		cur.WriteString(trimmed)
		op, args, _ := strings.Cut(strings.TrimSpace(cur.String()), " ")
		out = append(out, dockerInstr{strings.ToUpper(op), strings.TrimSpace(args)})
		cur.Reset()
	}
	return out
}

// shellWords splits a command line as sh would for this purpose: blanks
// separate words, quotes group them.
func shellWords(s string) []string {
	var words []string
	var w strings.Builder
	inWord := false
	var quote rune
	for _, r := range s {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
			w.WriteRune(r)
		case r == '"' || r == '\'':
			quote, inWord = r, true
		case r == ' ' || r == '\t':
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		default:
			w.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		words = append(words, w.String())
	}
	return words
}

// list is v as a YAML sequence, or nil.
func list(v any) []any {
	l, _ := v.([]any)
	return l
}

// str follows keys through nested maps and returns the string found, or "".
func str(m map[string]any, keys ...string) string {
	var v any = m
	for _, k := range keys {
		mm, ok := v.(map[string]any)
		if !ok {
			return ""
		}
		v = mm[k]
	}
	s, _ := v.(string)
	return s
}

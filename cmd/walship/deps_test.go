package main

import (
	"os/exec"
	"sort"
	"strings"
	"testing"
)

const module = "github.com/walship/walship/"

// layers is the layering docs/ARCHITECTURE.md draws: for every package
// outside cmd, e2e and internal, the walship packages it may depend on,
// directly or through others, and the third-party modules it may link.
// Everything else is forbidden; a new package must be added here (and to
// the picture) before its first test run passes.
var layers = map[string]struct {
	walship []string
	modules []string
}{
	"segment":              {},
	"incremental":          {},
	"sealed":               {modules: compress},
	"backends":             {},
	"backends/memory":      {walship: []string{"backends"}},
	"backends/fs":          {walship: []string{"backends"}},
	"backends/retry":       {walship: []string{"backends"}},
	"backends/storagetest": {walship: []string{"backends"}},
	"backends/s3":          {walship: []string{"backends"}, modules: []string{"github.com/aws/"}},
	"archive":              {walship: archiveDeps, modules: compress},
	"manifest":             {walship: with(archiveDeps, "archive"), modules: compress},
	"catalog":              {walship: with(archiveDeps, "archive", "manifest"), modules: compress},
	"spool":                {walship: with(archiveDeps, "archive"), modules: compress},
	"fetch":                {walship: with(archiveDeps, "archive", "spool"), modules: compress},
	"agent":                {walship: with(archiveDeps, "archive", "manifest", "catalog", "spool", "fetch"), modules: compress},
	"restore":              {walship: with(archiveDeps, "archive", "manifest", "catalog", "incremental"), modules: with(compress, "golang.org/x/sys")},
	"drill":                {walship: with(archiveDeps, "archive", "manifest", "catalog", "restore", "incremental"), modules: with(compress, "golang.org/x/sys")},
	"retention":            {walship: with(archiveDeps, "archive", "manifest", "catalog"), modules: compress},
	"verify":               {walship: with(archiveDeps, "archive", "manifest", "catalog"), modules: compress},
	"postgres":             {walship: []string{"segment"}, modules: pgx},
	"backup":               {walship: with(archiveDeps, "archive", "manifest", "catalog", "postgres"), modules: with(pgx, compress...)},
	"config":               {walship: []string{"segment", "sealed"}, modules: with(compress, "go.yaml.in/yaml/")},
	"schedule":             {modules: []string{"github.com/robfig/cron/"}},
}

var (
	archiveDeps = []string{"segment", "sealed", "backends", "backends/retry"}
	compress    = []string{"github.com/klauspost/compress"}
	pgx         = []string{"github.com/jackc/", "golang.org/x/text"}
)

func with(base []string, more ...string) []string {
	return append(append([]string(nil), base...), more...)
}

// TestLayers checks every package's transitive dependencies (go list
// -deps) against layers: backends know nothing of WAL, segment imports only
// the standard library, no package that reads the archive links pgx or the
// AWS SDK, and only cmd/walship wires concrete stores and the config.
func TestLayers(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}}|{{join .Deps " "}}`, "../../...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	seen := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		path, deps, _ := strings.Cut(line, "|")
		pkg := strings.TrimPrefix(path, module)
		if pkg == "cmd/walship" || strings.HasPrefix(pkg, "e2e") || strings.HasPrefix(pkg, "internal/") {
			continue
		}
		rule, ok := layers[pkg]
		if !ok {
			t.Errorf("package %s is not in the layering table: add it to layers and to docs/ARCHITECTURE.md", pkg)
			continue
		}
		seen[pkg] = true
		for _, bad := range forbidden(strings.Fields(deps), rule.walship, rule.modules) {
			t.Errorf("%s depends on %s, which its layer does not allow", pkg, bad)
		}
	}
	for pkg := range layers {
		if !seen[pkg] {
			t.Errorf("the layering table names %s, which no longer exists", pkg)
		}
	}
}

// forbidden lists the dependencies that are neither the standard library
// nor allowed.
func forbidden(deps, walship, modules []string) []string {
	var bad []string
	for _, d := range deps {
		first, _, _ := strings.Cut(d, "/")
		if !strings.Contains(first, ".") {
			continue // the standard library
		}
		if w, ok := strings.CutPrefix(d, module); ok {
			if !contains(walship, w) {
				bad = append(bad, w)
			}
			continue
		}
		if !hasPrefix(modules, d) {
			bad = append(bad, d)
		}
	}
	sort.Strings(bad)
	return bad
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func hasPrefix(prefixes []string, s string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// The table itself must say what the architecture promises, so that a
// loosened entry fails here too: the promises, checked against it.
func TestLayersPromises(t *testing.T) {
	for pkg, rule := range layers {
		for _, m := range rule.modules {
			if strings.HasPrefix(m, "github.com/aws/") && pkg != "backends/s3" {
				t.Errorf("%s may link the AWS SDK: only backends/s3 may", pkg)
			}
			if strings.HasPrefix(m, "github.com/jackc/") && pkg != "postgres" && pkg != "backup" {
				t.Errorf("%s may link pgx: only postgres and backup may", pkg)
			}
		}
		for _, w := range rule.walship {
			if w == "config" || w == "backends/fs" || w == "backends/s3" {
				t.Errorf("%s may depend on %s: only cmd/walship wires those", pkg, w)
			}
			if strings.HasPrefix(pkg, "backends") && w != "backends" {
				t.Errorf("%s may depend on %s: backends know nothing of WAL", pkg, w)
			}
			if w == "postgres" && pkg != "backup" {
				t.Errorf("%s may depend on postgres: only backup talks to the server", pkg)
			}
		}
	}
	for _, pure := range []string{"segment", "incremental"} {
		if r := layers[pure]; len(r.walship)+len(r.modules) != 0 {
			t.Errorf("%s must import only the standard library", pure)
		}
	}
}

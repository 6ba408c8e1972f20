package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func write(t *testing.T, s string) string {
	p := filepath.Join(t.TempDir(), "plugd.yaml")
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestUnknownKeyNamesLine(t *testing.T) {
	_, err := Load(write(t, "listen: 127.0.0.1:1\nwatch: false\nbogus: 1\n"))
	if err == nil || !strings.Contains(err.Error(), "line 3") || !strings.Contains(err.Error(), "bogus") {
		t.Fatalf("err = %v", err)
	}
}

func TestNonLoopbackNeedsToken(t *testing.T) {
	if _, err := Load(write(t, "listen: 0.0.0.0:2539\n")); err == nil || !strings.Contains(err.Error(), "token") {
		t.Fatalf("err = %v", err)
	}
	if _, err := Load(write(t, "listen: 0.0.0.0:2539\ntoken: s3cret\n")); err != nil {
		t.Fatal(err)
	}
}

func TestPluginSectionStrict(t *testing.T) {
	c, err := Load(write(t, "check_timeout: 5s\nplugins:\n  gw:\n    listen: x\n    typo: 1\n"))
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Listen string `yaml:"listen"`
	}
	err = c.DecodePlugin("gw", &v)
	if err == nil || !strings.Contains(err.Error(), "line 5") || !strings.Contains(err.Error(), "typo") {
		t.Fatalf("err = %v", err)
	}
	var none struct{ A int }
	none.A = 7
	if err := c.DecodePlugin("absent", &none); err != nil || none.A != 7 {
		t.Fatal("absent section changed defaults")
	}
	if c.WatchEnabled() != true || c.CheckTimeout.String() == "" {
		t.Fatal("defaults lost")
	}
}

func TestEmptyFileIsDefaults(t *testing.T) {
	c, err := Load(write(t, ""))
	if err != nil || c.Listen != "127.0.0.1:2539" {
		t.Fatalf("%v %+v", err, c)
	}
}

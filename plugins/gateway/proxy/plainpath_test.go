package proxy

import (
	"net/url"
	"testing"
)

// plainPath must only accept paths EscapedPath leaves unchanged.
func TestPlainPathMatchesEscapedPath(t *testing.T) {
	for c := 0; c < 256; c++ {
		p := "/a" + string(rune(c)) + "/b"
		if c >= 0x80 {
			p = "/a" + string([]byte{byte(c)}) + "/b"
		}
		if plainPath(p) && (&url.URL{Path: p}).EscapedPath() != p {
			t.Errorf("plainPath(%q) but EscapedPath gives %q", p, (&url.URL{Path: p}).EscapedPath())
		}
	}
	for _, p := range []string{"/", "/svc/x", "/a-b_c.d~e/f:g@h;i=j&k$l+m,n"} {
		if !plainPath(p) {
			t.Errorf("plainPath(%q) = false", p)
		}
	}
	for _, p := range []string{"", "x", "/a b", "/a%20b", "/a!b", "/a?b"} {
		if plainPath(p) {
			t.Errorf("plainPath(%q) = true", p)
		}
	}
}

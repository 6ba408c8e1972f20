package admin

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/plugd/plugd/sdk"
)

// wantsJSON reports whether the client asked for JSON instead of the seed's
// plain-text tables.
func wantsJSON(r *http.Request) bool {
	return strings.Contains(r.Header.Get("Accept"), "application/json")
}

// reply answers with text (the seed's form) or v as JSON.
func reply(w http.ResponseWriter, r *http.Request, status int, text string, v any) {
	if wantsJSON(r) {
		sdk.WriteJSON(w, status, v)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	fmt.Fprint(w, text)
}

// fail answers err with its status and a one-line reason.
func fail(w http.ResponseWriter, r *http.Request, err error) {
	status := sdk.StatusOf(err)
	reply(w, r, status, "error: "+err.Error()+"\n", map[string]string{"error": err.Error()})
}

const rule = "------------------------------------------------------------\n"

// table renders rows in the seed's style: header, rule, tab-separated rows, rule.
func table(header string, rows []string) string {
	var b strings.Builder
	b.WriteString(header + "\n" + rule)
	for _, r := range rows {
		b.WriteString(r + "\n")
	}
	b.WriteString(rule)
	return b.String()
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.Format("2006-01-02 15:04:05.000")
}

// recorder remembers the status for the access log and whether the header
// was sent (a panic after that cannot become a 500). It forwards Flush and
// Hijack so plugins can stream and upgrade.
type recorder struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(p []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(p)
	r.bytes += int64(n)
	return n, err
}

func (r *recorder) Flush() {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (r *recorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	h, ok := r.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("hijack not supported")
	}
	if r.status == 0 {
		r.status = http.StatusSwitchingProtocols
	}
	return h.Hijack()
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

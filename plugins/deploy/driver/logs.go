package driver

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

// tailLines returns the last n lines of a file (all when n < 0), reading at
// most the last 1 MiB.
func tailLines(path string, n int) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	const max = 1 << 20
	off := int64(0)
	if st.Size() > max {
		off = st.Size() - max
	}
	b := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(b, off); err != nil && err != io.EOF {
		return nil, err
	}
	if off > 0 {
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	b = bytes.TrimRight(b, "\n")
	if len(b) == 0 {
		return nil, nil
	}
	lines := bytes.Split(b, []byte("\n"))
	if n >= 0 && len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = string(l)
	}
	return out, nil
}

type logFile struct{ id, path string }

func (d *Local) logFiles(app, name, only string) ([]logFile, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.procs[pkey(app, name)]
	if p == nil {
		return nil, false
	}
	var out []logFile
	for _, in := range p.sorted() {
		if only == "" || in.rec.ID == only {
			out = append(out, logFile{in.rec.ID, in.rec.Log})
		}
	}
	return out, true
}

// Logs implements Driver: the last Tail lines of each instance's log, then,
// with Follow, new output as it is written until ctx ends. With several
// instances every line is prefixed with "[<id>] ".
func (d *Local) Logs(ctx context.Context, app, name string, opt LogOptions, w io.Writer) error {
	files, ok := d.logFiles(app, name, opt.Instance)
	if !ok {
		return fmt.Errorf("proc %s of %s is not deployed", name, app)
	}
	if opt.Instance != "" && len(files) == 0 {
		return fmt.Errorf("no instance %q in proc %s", opt.Instance, name)
	}
	prefix := func(id string) string {
		if opt.Instance != "" {
			return ""
		}
		return "[" + id + "] "
	}
	offsets := map[string]int64{}
	for _, f := range files {
		lines, _ := tailLines(f.path, opt.Tail)
		for _, l := range lines {
			if _, err := fmt.Fprintf(w, "%s%s\n", prefix(f.id), l); err != nil {
				return err
			}
		}
		if st, err := os.Stat(f.path); err == nil {
			offsets[f.path] = st.Size()
		}
	}
	flush(w)
	if !opt.Follow {
		return nil
	}
	partial := map[string][]byte{}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
		files, ok = d.logFiles(app, name, opt.Instance)
		if !ok {
			return nil
		}
		wrote := false
		for _, f := range files {
			off, seen := offsets[f.path]
			if !seen {
				off = 0 // a new instance: from its start
			}
			b, n := readFrom(f.path, off)
			if n < off {
				off = 0 // truncated
			}
			offsets[f.path] = off + int64(len(b))
			if len(b) == 0 {
				continue
			}
			data := append(partial[f.path], b...)
			i := bytes.LastIndexByte(data, '\n')
			if i < 0 {
				partial[f.path] = data
				continue
			}
			partial[f.path] = append([]byte(nil), data[i+1:]...)
			for _, l := range bytes.Split(data[:i], []byte("\n")) {
				if _, err := fmt.Fprintf(w, "%s%s\n", prefix(f.id), l); err != nil {
					return nil
				}
			}
			wrote = true
		}
		if wrote {
			flush(w)
		}
	}
}

// readFrom reads a file from off (at most 1 MiB) and returns the file size.
func readFrom(path string, off int64) ([]byte, int64) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || st.Size() <= off {
		return nil, st.Size()
	}
	n := st.Size() - off
	if n > 1<<20 {
		n = 1 << 20
	}
	b := make([]byte, n)
	m, _ := f.ReadAt(b, off)
	return b[:m], st.Size()
}

func flush(w io.Writer) {
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
}

package driver

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
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
	rotIno := map[string]uint64{} // inode of <log>.1 when last read
	for _, f := range files {
		lines, _ := tailRotated(f.path, opt.Tail, d.cfg.LogKeep)
		for _, l := range lines {
			if _, err := fmt.Fprintf(w, "%s%s\n", prefix(f.id), l); err != nil {
				return err
			}
		}
		if st, err := os.Stat(f.path); err == nil {
			offsets[f.path] = st.Size()
		}
		rotIno[f.path] = inode(rotated(f.path, 1))
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
			var b []byte
			if ino := inode(rotated(f.path, 1)); seen && ino != rotIno[f.path] {
				// rotated since the last poll: what was not read yet is at
				// the end of the file that was current then, now <log>.r,
				// then in <log>.r-1 … <log>.1
				r := rotations(f.path, rotIno[f.path], d.cfg.LogKeep)
				b, _ = readFrom(rotated(f.path, r), off)
				for i := r - 1; i >= 1; i-- {
					more, _ := readFrom(rotated(f.path, i), 0)
					b = append(b, more...)
				}
				off = 0
				rotIno[f.path] = ino
			} else if !seen {
				rotIno[f.path] = ino
			} else if st, err := os.Stat(f.path); err == nil && st.Size() < off {
				off = 0 // truncated by someone else
			}
			nb, _ := readFrom(f.path, off)
			offsets[f.path] = off + int64(len(nb))
			b = append(b, nb...)
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

// inode is the inode number of path, 0 if there is no such file.
func inode(path string) uint64 {
	var st syscall.Stat_t
	if syscall.Stat(path, &st) != nil {
		return 0
	}
	return st.Ino
}

// rotations tells how many times path was rotated since <log>.1 had inode
// was (0: there was no <log>.1 then): that file is now <log>.r+1.
func rotations(path string, was uint64, keep int) int {
	if was == 0 {
		r := 0
		for i := 1; i <= keep && inode(rotated(path, i)) != 0; i++ {
			r = i
		}
		return max(r, 1)
	}
	for i := 2; i <= keep; i++ {
		if inode(rotated(path, i)) == was {
			return i - 1
		}
	}
	return keep // rotated more than we keep: the oldest is all there is
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

// rotateLogs rotates every instance log above LogMaxSize. The instances
// write to their log through a descriptor they inherited (so that they do
// not depend on the plugin instance that started them), which cannot be
// pointed at a new file: the log is copied to <log>.1 (older ones shift
// to .2 … .LogKeep) and then truncated, and the writer, in append mode,
// goes on at the start of the emptied file. Output written between the
// last copy and the truncation (microseconds) is lost.
func (d *Local) rotateLogs() {
	d.mu.Lock()
	var paths []string
	for _, p := range d.procs {
		for _, in := range p.insts {
			paths = append(paths, in.rec.Log)
		}
	}
	d.mu.Unlock()
	for _, path := range paths {
		if st, err := os.Stat(path); err == nil && st.Size() > d.cfg.LogMaxSize {
			if err := rotate(path, d.cfg.LogKeep); err != nil {
				d.log().Warnf("driver: rotate %s: %v", path, err)
			}
		}
	}
}

// keepStoppedLogs is how many stopped instances of an app keep their log
// files, to look into a crash or a rollout after the fact. Older ones are
// removed: every scale-down and rollout stops instances for good, and their
// logs would otherwise fill the disk.
const keepStoppedLogs = 20

// pruneLogs removes the log files (with their rotations) of all but the
// keepStoppedLogs most recently written stopped instances of app.
func (d *Local) pruneLogs(app string) {
	dir := filepath.Join(d.cfg.DataDir, "logs", app)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	live := map[string]bool{}
	d.mu.Lock()
	for _, p := range d.procs {
		if p.rec.Spec.App == app {
			for id := range p.insts {
				live[id] = true
			}
		}
	}
	d.mu.Unlock()
	type logSet struct {
		newest time.Time
		files  []string
	}
	sets := map[string]*logSet{}
	for _, e := range entries {
		id, _, ok := strings.Cut(e.Name(), ".log")
		info, err := e.Info()
		if !ok || live[id] || err != nil || !info.Mode().IsRegular() {
			continue
		}
		s := sets[id]
		if s == nil {
			s = &logSet{}
			sets[id] = s
		}
		s.files = append(s.files, filepath.Join(dir, e.Name()))
		if info.ModTime().After(s.newest) {
			s.newest = info.ModTime()
		}
	}
	ids := make([]string, 0, len(sets))
	for id := range sets {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return sets[ids[i]].newest.After(sets[ids[j]].newest) })
	for _, id := range ids[min(len(ids), keepStoppedLogs):] {
		for _, f := range sets[id].files {
			if err := os.Remove(f); err != nil && !os.IsNotExist(err) {
				d.log().Warnf("driver: remove old log %s: %v", f, err)
			}
		}
	}
}

func rotated(path string, i int) string {
	if i == 0 {
		return path
	}
	return path + "." + strconv.Itoa(i)
}

func rotate(path string, keep int) error {
	for i := keep - 1; i >= 1; i-- {
		if err := os.Rename(rotated(path, i), rotated(path, i+1)); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	src, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(rotated(path, 1), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	// copy until caught up with the writer (bounded), then truncate
	var off int64
	for i := 0; i < 8; i++ {
		n, err := io.Copy(dst, io.NewSectionReader(src, off, 1<<62))
		if err != nil {
			dst.Close()
			return err
		}
		off += n
		if n == 0 {
			break
		}
	}
	if err := src.Truncate(0); err != nil {
		dst.Close()
		return err
	}
	return dst.Close()
}

// tailRotated is tailLines over a log and its rotated files, newest last.
func tailRotated(path string, n, keep int) ([]string, error) {
	var out []string
	var first error
	for i := 0; i <= keep; i++ {
		need := n
		if n >= 0 {
			need = n - len(out)
			if need <= 0 {
				break
			}
		}
		lines, err := tailLines(rotated(path, i), need)
		if err != nil {
			if i == 0 {
				first = err
			}
			if os.IsNotExist(err) && i > 0 {
				break
			}
			continue
		}
		out = append(lines, out...)
	}
	if out == nil && first != nil {
		return nil, first
	}
	return out, nil
}

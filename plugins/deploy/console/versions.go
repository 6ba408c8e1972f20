package console

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha1"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/julienschmidt/httprouter"
	"github.com/plugd/plugd/plugins/deploy/spec"
	"github.com/plugd/plugd/sdk"
)

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

func (c *Console) listVersions(w http.ResponseWriter, r *http.Request, ps httprouter.Params, _ *caller) error {
	app := ps.ByName("app")
	if _, err := c.repo(r.Context(), app); err != nil {
		return err
	}
	kvs, err := c.h.Store().List(r.Context(), pfxVer+app+"/")
	if err != nil {
		return err
	}
	out := []Version{}
	for _, kv := range kvs {
		var v Version
		if json.Unmarshal(kv.Value, &v) == nil {
			out = append(out, v)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	sdk.WriteJSON(w, http.StatusOK, out)
	return nil
}

func (c *Console) getVersion(w http.ResponseWriter, r *http.Request, ps httprouter.Params, _ *caller) error {
	v, err := c.version(r.Context(), ps.ByName("app"), ps.ByName("mv"))
	if err != nil {
		return err
	}
	sdk.WriteJSON(w, http.StatusOK, v)
	return nil
}

// versionRequest registers a version. The files come from one of: Files
// (name → base64 content, an upload), Path (a file or directory on this
// machine, e.g. an appbuild artifact) or URL (http(s); a .tar.gz/.tgz/.tar
// is unpacked, anything else is saved under its base name). The spec is
// Spec, or the lain.yaml among the files.
type versionRequest struct {
	MetaVersion string            `json:"meta_version"`
	Spec        string            `json:"spec"`
	Files       map[string]string `json:"files"`
	Path        string            `json:"path"`
	URL         string            `json:"url"`
}

func (c *Console) createVersion(w http.ResponseWriter, r *http.Request, ps httprouter.Params, u *caller) error {
	app := ps.ByName("app")
	if _, err := c.repo(r.Context(), app); err != nil {
		return err
	}
	if err := c.mayChange(r.Context(), u, app); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(c.h.DataDir(), "upload-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	var req versionRequest
	var source string
	ct := r.Header.Get("Content-Type")
	switch {
	case strings.HasPrefix(ct, "application/gzip"), strings.HasPrefix(ct, "application/x-gzip"), strings.HasPrefix(ct, "application/x-tar"), strings.HasPrefix(ct, "application/octet-stream"):
		// a raw archive upload; meta_version in the query, spec in lain.yaml
		req.MetaVersion = r.URL.Query().Get("meta_version")
		body := http.MaxBytesReader(w, r.Body, c.cfg.MaxUpload)
		if err := untar(body, tmp); err != nil {
			return sdk.Errorf(http.StatusBadRequest, "archive: %v", err)
		}
		source = "upload"
	default:
		if err := sdk.DecodeJSON(r, &req, c.cfg.MaxUpload); err != nil {
			return err
		}
		n := 0
		for _, s := range []string{req.Path, req.URL} {
			if s != "" {
				n++
			}
		}
		if len(req.Files) > 0 {
			n++
		}
		if n > 1 {
			return sdk.Errorf(http.StatusBadRequest, "give one of files, path and url")
		}
		switch {
		case len(req.Files) > 0:
			source = "upload"
			for name, b64 := range req.Files {
				dst, err := safeJoin(tmp, name)
				if err != nil {
					return sdk.Errorf(http.StatusBadRequest, "file %q: %v", name, err)
				}
				b, err := base64.StdEncoding.DecodeString(b64)
				if err != nil {
					return sdk.Errorf(http.StatusBadRequest, "file %q: content is not base64: %v", name, err)
				}
				if err := writeFile(dst, bytes.NewReader(b), 0o755); err != nil {
					return err
				}
			}
		case req.Path != "":
			source = "path:" + req.Path
			if !filepath.IsAbs(req.Path) {
				return sdk.Errorf(http.StatusBadRequest, "path %q must be absolute", req.Path)
			}
			if err := copyTree(req.Path, tmp); err != nil {
				return sdk.Errorf(http.StatusBadRequest, "path: %v", err)
			}
		case req.URL != "":
			source = "url:" + req.URL
			if err := c.fetch(r, req.URL, tmp); err != nil {
				return sdk.Errorf(http.StatusBadRequest, "url: %v", err)
			}
		}
	}
	if req.Spec == "" {
		b, err := os.ReadFile(filepath.Join(tmp, "lain.yaml"))
		if err != nil {
			return sdk.Errorf(http.StatusBadRequest, "no spec: give \"spec\" or include a lain.yaml")
		}
		req.Spec = string(b)
	}
	sp, err := spec.Parse([]byte(req.Spec))
	if err != nil {
		return sdk.Errorf(http.StatusBadRequest, "%v", err)
	}
	if sp.AppName != "" && sp.AppName != app && !strings.HasPrefix(app, "resource.") {
		return sdk.Errorf(http.StatusBadRequest, "spec appname %q is not %q", sp.AppName, app)
	}
	files, sum, err := listFiles(tmp, req.Spec)
	if err != nil {
		return err
	}
	if req.MetaVersion == "" {
		req.MetaVersion = fmt.Sprintf("%d-%s", time.Now().Unix(), sum)
	}
	if !spec.MetaVersionRe.MatchString(req.MetaVersion) {
		return sdk.Errorf(http.StatusBadRequest, "meta_version %q: want <10-digit unix time>-<40-hex sha>", req.MetaVersion)
	}
	v := Version{AppName: app, MetaVersion: req.MetaVersion, Spec: req.Spec, AppType: appType(app, sp.AppType), Procs: sp.Names(),
		Files: files, Source: source, Created: time.Now().UTC(), CreatedBy: u.name}
	if err := c.saveVersion(r, &v, tmp); err != nil {
		return err
	}
	sdk.WriteJSON(w, http.StatusCreated, v)
	return nil
}

// saveVersion moves the files in dir to the release directory and records
// the version.
func (c *Console) saveVersion(r *http.Request, v *Version, dir string) error {
	dst := c.releaseDir(v.AppName, v.MetaVersion)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	return c.h.Store().Update(r.Context(), func(tx sdk.Tx) error {
		if _, err := tx.Get(pfxVer + v.AppName + "/" + v.MetaVersion); err == nil {
			return sdk.Errorf(http.StatusConflict, "version %s of %s already exists", v.MetaVersion, v.AppName)
		}
		_ = os.RemoveAll(dst) // left by an earlier failed attempt
		if dir != "" {
			if err := os.Rename(dir, dst); err != nil {
				return err
			}
		} else if err := os.MkdirAll(dst, 0o755); err != nil {
			return err
		}
		if err := txPut(tx, pfxVer+v.AppName+"/"+v.MetaVersion, v); err != nil {
			return err
		}
		var rp Repo
		if txGet(tx, pfxRepo+v.AppName, &rp) == nil && rp.AppType != v.AppType {
			rp.AppType = v.AppType
			return txPut(tx, pfxRepo+v.AppName, &rp)
		}
		return nil
	})
}

func listFiles(dir, specText string) ([]string, string, error) {
	h := sha1.New()
	io.WriteString(h, specText)
	files := []string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		files = append(files, rel)
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		io.WriteString(h, "\x00"+rel+"\x00")
		_, err = io.Copy(h, f)
		return err
	})
	return files, hex.EncodeToString(h.Sum(nil)), err
}

// safeJoin joins a relative name under dir, refusing escapes.
func safeJoin(dir, name string) (string, error) {
	clean := path.Clean("/" + strings.ReplaceAll(name, "\\", "/"))
	if name == "" || strings.HasPrefix(name, "/") || strings.Contains("/"+name+"/", "/../") || clean == "/" {
		return "", errors.New("want a relative path inside the release")
	}
	return filepath.Join(dir, filepath.FromSlash(clean[1:])), nil
}

func writeFile(dst string, r io.Reader, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// untar unpacks a tar or tar.gz stream: regular files and directories only.
func untar(r io.Reader, dir string) error {
	br := &peekReader{r: r}
	head, _ := br.peek(2)
	var src io.Reader = br
	if len(head) == 2 && head[0] == 0x1f && head[1] == 0x8b {
		gz, err := gzip.NewReader(br)
		if err != nil {
			return err
		}
		defer gz.Close()
		src = gz
	}
	tr := tar.NewReader(src)
	n := 0
	for {
		hd, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		name := strings.TrimPrefix(hd.Name, "./")
		if name == "" || name == "." {
			continue
		}
		dst, err := safeJoin(dir, name)
		if err != nil {
			return fmt.Errorf("%q: %v", hd.Name, err)
		}
		switch hd.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(dst, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := writeFile(dst, tr, os.FileMode(hd.Mode)&0o755|0o600); err != nil {
				return err
			}
			n++
		default:
			return fmt.Errorf("%q: only files and directories are allowed", hd.Name)
		}
	}
	if n == 0 {
		return errors.New("no files")
	}
	return nil
}

type peekReader struct {
	r   io.Reader
	buf []byte
}

func (p *peekReader) peek(n int) ([]byte, error) {
	for len(p.buf) < n {
		b := make([]byte, n-len(p.buf))
		m, err := p.r.Read(b)
		p.buf = append(p.buf, b[:m]...)
		if err != nil {
			return p.buf, err
		}
	}
	return p.buf, nil
}

func (p *peekReader) Read(b []byte) (int, error) {
	if len(p.buf) > 0 {
		n := copy(b, p.buf)
		p.buf = p.buf[n:]
		return n, nil
	}
	return p.r.Read(b)
}

// copyTree copies a file or directory (regular files and dirs only).
func copyTree(src, dst string) error {
	st, err := os.Stat(src)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		if strings.HasSuffix(src, ".tar.gz") || strings.HasSuffix(src, ".tgz") || strings.HasSuffix(src, ".tar") {
			f, err := os.Open(src)
			if err != nil {
				return err
			}
			defer f.Close()
			return untar(f, dst)
		}
		f, err := os.Open(src)
		if err != nil {
			return err
		}
		defer f.Close()
		return writeFile(filepath.Join(dst, filepath.Base(src)), f, st.Mode().Perm()|0o600)
	}
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(target, 0o755)
		case d.Type().IsRegular():
			info, err := d.Info()
			if err != nil {
				return err
			}
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			return writeFile(target, f, info.Mode().Perm()|0o600)
		}
		return nil // symlinks and devices are skipped
	})
}

// fetch downloads a URL into dir.
func (c *Console) fetch(r *http.Request, raw, dir string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%q: want an http(s) URL", raw)
	}
	req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, u.String(), nil)
	if err != nil {
		return err
	}
	cl := &http.Client{Timeout: 10 * time.Minute}
	resp, err := cl.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", raw, resp.Status)
	}
	body := io.LimitReader(resp.Body, c.cfg.MaxUpload+1)
	base := path.Base(u.Path)
	if strings.HasSuffix(base, ".tar.gz") || strings.HasSuffix(base, ".tgz") || strings.HasSuffix(base, ".tar") {
		return untar(body, dir)
	}
	if base == "" || base == "/" || base == "." {
		base = "download"
	}
	dst := filepath.Join(dir, base)
	if err := writeFile(dst, body, 0o755); err != nil {
		return err
	}
	if st, err := os.Stat(dst); err == nil && st.Size() > c.cfg.MaxUpload {
		return fmt.Errorf("larger than %d bytes", c.cfg.MaxUpload)
	}
	return nil
}

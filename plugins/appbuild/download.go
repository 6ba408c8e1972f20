package main

import (
	"errors"
	"io"
	"mime"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/plugd/plugd/plugins/appbuild/apkchannel"
	"github.com/plugd/plugd/sdk"
)

func contentType(name string) string {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".apk":
		return "application/vnd.android.package-archive"
	case ".ipa":
		return "application/octet-stream"
	case ".aab":
		return "application/octet-stream"
	}
	if t := mime.TypeByExtension(filepath.Ext(name)); t != "" {
		return t
	}
	return "application/octet-stream"
}

// findArtifact returns the build and the artifact named file in it.
func (p *plugin) findArtifact(r *http.Request, buildID, file string) (*Build, *Artifact, error) {
	b, err := p.getBuild(r.Context(), buildID)
	if err != nil {
		return nil, nil, err
	}
	for _, res := range b.Results {
		for i := range res.Artifacts {
			if res.Artifacts[i].File == file {
				if b.Removed {
					return nil, nil, sdk.Errorf(http.StatusGone, "artifacts of build %s were removed by the retention setting", b.ID)
				}
				return b, &res.Artifacts[i], nil
			}
		}
	}
	return nil, nil, notFound("build %s has no file %q", buildID, file)
}

// download serves an artifact with Range support.
func (p *plugin) download(w http.ResponseWriter, r *http.Request, buildID, file string) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		methodNotAllowed(w, "GET", "HEAD")
		return
	}
	b, a, err := p.findArtifact(r, buildID, file)
	if err != nil {
		p.fail(w, r, err)
		return
	}
	// The name comes from the record, which only holds names we made, but
	// check anyway that it stays inside the build's directory.
	if a.File != filepath.Base(a.File) || strings.HasPrefix(a.File, ".") {
		p.fail(w, r, notFound("bad file name"))
		return
	}
	f, err := os.Open(filepath.Join(p.artifactsDir, b.ID, a.File))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			p.fail(w, r, sdk.Errorf(http.StatusGone, "file %s of build %s is missing from the data dir", a.File, b.ID))
			return
		}
		p.fail(w, r, err)
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		p.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", contentType(a.File))
	w.Header().Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": a.File}))
	w.Header().Set("ETag", `"`+a.SHA256+`"`)
	w.Header().Set("X-Checksum-Sha256", a.SHA256)
	http.ServeContent(w, r, a.File, st.ModTime(), f)
}

// downloadURLs is the seed's "package download urls": per channel of a
// build, its files with absolute URLs.
func (p *plugin) downloadURLs(w http.ResponseWriter, r *http.Request, id string) {
	b, err := p.getBuild(r.Context(), id)
	if err != nil {
		p.fail(w, r, err)
		return
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	type file struct {
		Artifact
		AbsURL string `json:"download_url,omitempty"`
	}
	type channel struct {
		Channel string `json:"channel"`
		Status  string `json:"status"`
		Files   []file `json:"files"`
	}
	out := struct {
		Build    string    `json:"build"`
		AppID    string    `json:"appid"`
		Version  string    `json:"version_name"`
		Status   string    `json:"status"`
		Removed  bool      `json:"artifacts_removed,omitempty"`
		Channels []channel `json:"channels"`
	}{Build: b.ID, AppID: b.AppID, Version: b.VersionName, Status: b.Status, Removed: b.Removed, Channels: []channel{}}
	for _, res := range b.Results {
		c := channel{Channel: res.Channel, Status: res.Status, Files: []file{}}
		if !b.Removed {
			for _, a := range res.Artifacts {
				c.Files = append(c.Files, file{Artifact: a, AbsURL: scheme + "://" + r.Host + a.URL})
			}
		}
		out.Channels = append(out.Channels, c)
	}
	sdk.WriteJSON(w, http.StatusOK, out)
}

// buildLog serves the log; with ?follow=1 it streams until the build ends.
func (p *plugin) buildLog(w http.ResponseWriter, r *http.Request, id string) {
	b, err := p.getBuild(r.Context(), id)
	if err != nil {
		p.fail(w, r, err)
		return
	}
	follow := r.URL.Query().Get("follow")
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Build-Status", b.Status)
	path := filepath.Join(p.logsDir, id+".log")
	if follow != "1" && follow != "true" {
		f, err := os.Open(path)
		if errors.Is(err, os.ErrNotExist) {
			w.WriteHeader(http.StatusOK) // queued: no log yet
			return
		}
		if err != nil {
			p.fail(w, r, err)
			return
		}
		defer f.Close()
		io.Copy(w, f)
		return
	}
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	fl, _ := w.(http.Flusher)
	var off int64
	buf := make([]byte, 32<<10)
	for {
		// Read whatever is there; then stop if the build had ended before
		// that read (so its last lines are not missed), else wait.
		cur, err := p.getBuild(r.Context(), id)
		ended := err != nil || cur.done()
		if f, err := os.Open(path); err == nil {
			for {
				n, err := f.ReadAt(buf, off)
				if n > 0 {
					w.Write(buf[:n])
					off += int64(n)
				}
				if err != nil || n == 0 {
					break
				}
			}
			f.Close()
		}
		if fl != nil {
			fl.Flush()
		}
		if ended {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-p.stopCtx.Done():
			return
		case <-p.draining:
			// Replaced or unloaded: end the stream so the swap completes
			// now; the client asks the new instance again.
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// readChannel reports the channel of an APK: a stored artifact
// (?build=<id>&file=<name>) or an APK sent as the POST body.
func (p *plugin) readChannel(w http.ResponseWriter, r *http.Request) {
	var path string
	switch r.Method {
	case http.MethodGet:
		b, a, err := p.findArtifact(r, r.URL.Query().Get("build"), r.URL.Query().Get("file"))
		if err != nil {
			p.fail(w, r, err)
			return
		}
		path = filepath.Join(p.artifactsDir, b.ID, a.File)
	case http.MethodPost:
		tmp, err := os.CreateTemp(p.workDir, "upload-*.apk")
		if err != nil {
			p.fail(w, r, err)
			return
		}
		defer os.Remove(tmp.Name())
		_, err = io.Copy(tmp, http.MaxBytesReader(w, r.Body, maxUpload))
		tmp.Close()
		if err != nil {
			var mb *http.MaxBytesError
			if errors.As(err, &mb) {
				p.fail(w, r, sdk.Errorf(http.StatusRequestEntityTooLarge, "APK larger than %d bytes", int64(maxUpload)))
				return
			}
			p.fail(w, r, badRequest("reading body: %v", err))
			return
		}
		path = tmp.Name()
	default:
		methodNotAllowed(w, "GET", "POST")
		return
	}
	info, err := apkchannel.ReadFile(path)
	if err != nil {
		p.fail(w, r, badRequest("%v", err))
		return
	}
	out := map[string]any{"channel": nil}
	if info != nil {
		out["channel"] = info.Channel
		if len(info.Extra) > 0 {
			out["extra"] = info.Extra
		}
	}
	sdk.WriteJSON(w, http.StatusOK, out)
}

const maxUpload = 2 << 30

package console

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/julienschmidt/httprouter"
	"github.com/plugd/plugd/plugins/deploy/driver"
	"github.com/plugd/plugd/plugins/deploy/spec"
	"github.com/plugd/plugd/sdk"
)

// ---- views ----

type procView struct {
	ProcName     string                  `json:"procname"`
	Type         string                  `json:"type"`
	Cmd          string                  `json:"cmd"`
	Deployed     bool                    `json:"deployed"`
	State        string                  `json:"state"`
	MetaVersion  string                  `json:"meta_version,omitempty"`
	NumInstances int                     `json:"num_instances"`
	CPU          float64                 `json:"cpu"`
	Memory       string                  `json:"memory"`
	Running      int                     `json:"running"`
	Healthy      int                     `json:"healthy"`
	Limits       *driver.Limits          `json:"limits,omitempty"`
	Instances    []driver.InstanceStatus `json:"instances"`
}

type opSummary struct {
	ID    string `json:"id"`
	Kind  string `json:"kind"`
	State string `json:"state"`
	Error string `json:"error,omitempty"`
}

type appView struct {
	AppName       string     `json:"appname"`
	AppType       string     `json:"apptype"`
	MetaVersion   string     `json:"meta_version"`
	State         string     `json:"state"`
	Procs         []procView `json:"procs"`
	Resources     []string   `json:"resources,omitempty"`
	LastOperation *opSummary `json:"last_operation,omitempty"`
	Created       time.Time  `json:"created"`
	Updated       time.Time  `json:"updated"`
}

// currentSpec is the spec of the version the app runs, or of the last one
// it tried to deploy.
func (c *Console) currentSpec(ctx context.Context, a *App) (*spec.App, *Version, error) {
	mv := a.MetaVersion
	if mv == "" {
		if op, err := c.operation(ctx, a.LastOp); err == nil {
			if s, ok := op.Request["meta_version"].(string); ok {
				mv = s
			}
		}
	}
	if mv == "" {
		return nil, nil, sdk.Errorf(http.StatusConflict, "app %q has no version yet", a.AppName)
	}
	v, sp, err := c.versionSpec(ctx, a.AppName, mv)
	if err != nil {
		return nil, nil, err
	}
	return sp, v, nil
}

// versionSpec is a registered version of app with its parsed spec.
func (c *Console) versionSpec(ctx context.Context, app, mv string) (*Version, *spec.App, error) {
	v, err := c.version(ctx, app, mv)
	if err != nil {
		return nil, nil, err
	}
	sp, err := spec.Parse([]byte(v.Spec))
	if err != nil {
		return nil, nil, err
	}
	return v, sp, nil
}

// changeableApp is the deployed app named in the path, if the caller may
// change it.
func (c *Console) changeableApp(r *http.Request, ps httprouter.Params, u *caller) (*App, error) {
	a, err := c.app(r.Context(), ps.ByName("app"))
	if err != nil {
		return nil, err
	}
	if err := c.mayChange(r.Context(), u, a.AppName); err != nil {
		return nil, err
	}
	return a, nil
}

// changeableProc is the proc named in the path, if the caller may change
// its app.
func (c *Console) changeableProc(r *http.Request, ps httprouter.Params, u *caller) (*App, *procView, error) {
	a, p, err := c.findProc(r, ps)
	if err != nil {
		return nil, nil, err
	}
	if err := c.mayChange(r.Context(), u, a.AppName); err != nil {
		return nil, nil, err
	}
	return a, p, nil
}

// ensureResources deploys the resource instances an app's spec uses and
// returns their names.
func (c *Console) ensureResources(ctx context.Context, o *opRun, sp *spec.App, app, user string) ([]string, error) {
	var res []string
	for _, rname := range sortedKeys(sp.UseResources) {
		inst, err := c.ensureResourceInstance(ctx, o, rname, app, user)
		if err != nil {
			return nil, fmt.Errorf("resource %s: %w", rname, err)
		}
		res = append(res, inst)
	}
	return res, nil
}

// procSpec is the driver spec of one proc: the version's values with the
// app's overrides.
func procSpec(a *App, v *Version, p *spec.Proc) driver.Spec {
	s := driver.Spec{App: a.AppName, Proc: p.Name, MetaVersion: v.MetaVersion, Type: p.Type, Cmd: p.Cmd, Dir: v.Dir,
		Env: p.Env, NumInstances: p.NumInstances, CPU: p.CPU, Memory: p.Memory, Health: p.Health}
	if pc := a.Procs[p.Name]; pc != nil {
		if pc.NumInstances != nil {
			s.NumInstances = *pc.NumInstances
		}
		if pc.CPU != nil {
			s.CPU = *pc.CPU
		}
		if pc.Memory != nil {
			s.Memory = *pc.Memory
		}
	}
	if p.IsWeb() {
		s.Service = a.AppName
	}
	return s
}

func (c *Console) view(ctx context.Context, a *App) appView {
	v := appView{AppName: a.AppName, AppType: a.AppType, MetaVersion: a.MetaVersion, Procs: []procView{},
		Resources: a.Resources, Created: a.Created, Updated: a.Updated}
	var op *Operation
	if a.LastOp != "" {
		if o, err := c.operation(ctx, a.LastOp); err == nil {
			op = o
			v.LastOperation = &opSummary{ID: o.ID, Kind: o.Kind, State: o.State, Error: o.Error}
		}
	}
	sp, ver, _ := c.currentSpec(ctx, a)
	allGood, anyHealthy, anyDeployed := true, false, false
	if sp != nil {
		for _, name := range sp.Names() {
			p := sp.Procs[name]
			ds := procSpec(a, ver, p)
			pv := procView{ProcName: name, Type: p.Type, Cmd: p.Cmd, NumInstances: ds.NumInstances, CPU: ds.CPU,
				Memory: spec.FormatMemory(ds.Memory), Instances: []driver.InstanceStatus{}, State: "not deployed"}
			if pc := a.Procs[name]; pc != nil && pc.Deployed && a.AppType != spec.TypeResource {
				pv.Deployed = true
				anyDeployed = true
				if st, ok := c.drv.Status(a.AppName, name); ok {
					pv.MetaVersion, pv.Running, pv.Healthy, pv.Instances = st.MetaVersion, st.Running, st.Healthy, st.Instances
					pv.NumInstances = st.Desired
					l := st.Limits
					pv.Limits = &l
				}
				switch {
				case pv.NumInstances == 0 && pv.Running == 0:
					pv.State = "stopped"
				case pv.Healthy == pv.NumInstances && len(pv.Instances) == pv.NumInstances:
					pv.State = "running"
				case pv.Running == 0:
					pv.State = "down"
				default:
					pv.State = "degraded"
				}
				if pv.State != "running" && pv.State != "stopped" {
					allGood = false
				}
				if pv.Healthy > 0 {
					anyHealthy = true
				}
			}
			if a.AppType == spec.TypeResource {
				pv.State = "template"
			}
			v.Procs = append(v.Procs, pv)
		}
	}
	switch {
	case op != nil && (op.State == OpPending || op.State == OpRunning):
		v.State = op.Kind + " in progress"
		if op.Kind == "deploy" {
			v.State = "deploying"
		}
	case a.AppType == spec.TypeResource:
		v.State = "registered"
	case a.MetaVersion == "" || (op != nil && op.State == OpFailed && !anyHealthy && anyDeployed):
		v.State = "failed"
	case allGood:
		v.State = "running"
	default:
		v.State = "degraded"
	}
	return v
}

// ---- apps ----

var appTypes = map[string]bool{spec.TypeApp: true, spec.TypeService: true, spec.TypeResource: true, spec.TypeResourceInstance: true}

func (c *Console) listApps(w http.ResponseWriter, r *http.Request, _ httprouter.Params, _ *caller) error {
	want := r.URL.Query().Get("apptype")
	if want != "" && !appTypes[want] {
		return sdk.Errorf(http.StatusBadRequest, "apptype %q: want app, service, resource or resource-instance", want)
	}
	kvs, err := c.h.Store().List(r.Context(), pfxApp)
	if err != nil {
		return err
	}
	out := []appView{}
	for _, kv := range kvs {
		var a App
		if json.Unmarshal(kv.Value, &a) != nil || (want != "" && a.AppType != want) {
			continue
		}
		out = append(out, c.view(r.Context(), &a))
	}
	sdk.WriteJSON(w, http.StatusOK, out)
	return nil
}

func (c *Console) getApp(w http.ResponseWriter, r *http.Request, ps httprouter.Params, _ *caller) error {
	a, err := c.app(r.Context(), ps.ByName("app"))
	if err != nil {
		return err
	}
	sdk.WriteJSON(w, http.StatusOK, c.view(r.Context(), a))
	return nil
}

func (c *Console) deployApp(w http.ResponseWriter, r *http.Request, _ httprouter.Params, u *caller) error {
	var req struct {
		AppName     string `json:"appname"`
		MetaVersion string `json:"meta_version"`
	}
	if err := sdk.DecodeJSON(r, &req, 0); err != nil {
		return err
	}
	ctx := r.Context()
	rp, err := c.repo(ctx, req.AppName)
	if err != nil {
		return err
	}
	if err := c.mayChange(ctx, u, rp.AppName); err != nil {
		return err
	}
	var ver *Version
	if req.MetaVersion != "" {
		ver, err = c.version(ctx, rp.AppName, req.MetaVersion)
	} else {
		ver, err = c.latestVersion(ctx, rp.AppName)
	}
	if err != nil {
		return err
	}
	now := time.Now().UTC()
	a := App{AppName: rp.AppName, AppType: ver.AppType, Procs: map[string]*ProcConf{}, Created: now, Updated: now}
	for _, p := range ver.Procs {
		a.Procs[p] = &ProcConf{Deployed: true}
	}
	err = c.h.Store().Update(ctx, func(tx sdk.Tx) error {
		if _, err := tx.Get(pfxApp + a.AppName); err == nil {
			return sdk.Errorf(http.StatusConflict, "app %q is already deployed: PUT a meta_version to change it", a.AppName)
		}
		return txPut(tx, pfxApp+a.AppName, &a)
	})
	if err != nil {
		return err
	}
	mv := ver.MetaVersion
	return c.submit(w, a.AppName, "deploy", u.name, map[string]any{"meta_version": mv}, func(ctx context.Context, o *opRun) error {
		return c.doDeploy(ctx, o, a.AppName, mv, u.name)
	})
}

// doDeploy deploys a recorded app for the first time: its resources, then
// each proc. On failure everything it started is stopped.
func (c *Console) doDeploy(ctx context.Context, o *opRun, name, mv, user string) error {
	a, err := c.app(ctx, name)
	if err != nil {
		return err
	}
	ver, sp, err := c.versionSpec(ctx, name, mv)
	if err != nil {
		return err
	}
	if a.AppType == spec.TypeResource {
		// a resource's procs are templates for its instances: nothing runs
		a.MetaVersion = mv
		o.msg("resource %s registered at %s; instances are created by the apps that use it", name, mv)
		return c.saveApp(ctx, a)
	}
	// resources first: the app may need them at start
	if a.Resources, err = c.ensureResources(ctx, o, sp, name, user); err != nil {
		return err
	}
	var done []string
	for _, pn := range sp.Names() {
		if pc := a.Procs[pn]; pc == nil || !pc.Deployed {
			continue
		}
		ds := procSpec(a, ver, sp.Procs[pn])
		o.proc(pn, OpRunning, nil)
		if err := c.drv.Apply(ctx, ds, o.progress(pn)); err != nil {
			o.proc(pn, OpFailed, err)
			for _, d := range append(done, pn) {
				_ = c.drv.Remove(context.Background(), name, d)
			}
			o.msg("deploy failed: stopped every proc it started")
			return fmt.Errorf("proc %s: %w", pn, err)
		}
		o.proc(pn, OpSucceeded, nil)
		done = append(done, pn)
	}
	a.MetaVersion = mv
	return c.saveApp(ctx, a)
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func (c *Console) saveApp(ctx context.Context, a *App) error {
	a.Updated = time.Now().UTC()
	return c.h.Store().Update(context.Background(), func(tx sdk.Tx) error {
		var cur App
		if err := txGet(tx, pfxApp+a.AppName, &cur); err != nil {
			return fmt.Errorf("app %s: %w", a.AppName, err)
		}
		a.LastOp = cur.LastOp
		return txPut(tx, pfxApp+a.AppName, a)
	})
}

// ensureResourceInstance makes sure resource.<resource>.<client> is
// registered and deployed from the resource's current version.
func (c *Console) ensureResourceInstance(ctx context.Context, o *opRun, resource, client, user string) (string, error) {
	name := "resource." + resource + "." + client
	ra, err := c.app(ctx, resource)
	if err != nil {
		return "", fmt.Errorf("resource app %q must be registered and deployed first", resource)
	}
	if ra.AppType != spec.TypeResource {
		return "", fmt.Errorf("app %q is a %s, not a resource", resource, ra.AppType)
	}
	if _, err := c.app(ctx, name); err == nil {
		o.msg("resource instance %s already deployed", name)
		return name, nil
	}
	rv, err := c.version(ctx, resource, ra.MetaVersion)
	if err != nil {
		return "", err
	}
	if _, err := c.repo(ctx, name); err != nil {
		ms, _ := c.maintainers(ctx, client)
		r, _ := http.NewRequestWithContext(ctx, http.MethodPost, "/", nil)
		if _, err := c.registerRepo(r, name, user, ms); err != nil && sdk.StatusOf(err) != http.StatusConflict {
			return "", err
		}
	}
	iv, err := c.version(ctx, name, rv.MetaVersion)
	if err != nil {
		tmp, err := os.MkdirTemp(c.h.DataDir(), "upload-")
		if err != nil {
			return "", err
		}
		defer os.RemoveAll(tmp)
		if err := copyTree(rv.Dir, tmp); err != nil {
			return "", err
		}
		nv := *rv
		nv.AppName, nv.AppType, nv.Source, nv.Created = name, spec.TypeResourceInstance, "resource:"+resource, time.Now().UTC()
		r, _ := http.NewRequestWithContext(ctx, http.MethodPost, "/", nil)
		if err := c.saveVersion(r, &nv, tmp); err != nil {
			return "", err
		}
		iv = &nv
		iv.Dir = c.releaseDir(name, nv.MetaVersion)
	}
	now := time.Now().UTC()
	a := App{AppName: name, AppType: spec.TypeResourceInstance, Procs: map[string]*ProcConf{}, Created: now, Updated: now}
	for _, p := range iv.Procs {
		a.Procs[p] = &ProcConf{Deployed: true}
	}
	if err := c.h.Store().Update(ctx, func(tx sdk.Tx) error { return txPut(tx, pfxApp+name, &a) }); err != nil {
		return "", err
	}
	o.msg("deploying resource instance %s (%s)", name, iv.MetaVersion)
	if err := c.doDeploy(ctx, o, name, iv.MetaVersion, user); err != nil {
		_ = c.h.Store().Delete(context.Background(), pfxApp+name)
		return "", err
	}
	return name, nil
}

func (c *Console) updateApp(w http.ResponseWriter, r *http.Request, ps httprouter.Params, u *caller) error {
	ctx := r.Context()
	a, err := c.changeableApp(r, ps, u)
	if err != nil {
		return err
	}
	var req struct {
		MetaVersion string `json:"meta_version"`
	}
	if err := sdk.DecodeJSON(r, &req, 0); err != nil {
		return err
	}
	if !spec.MetaVersionRe.MatchString(req.MetaVersion) {
		return sdk.Errorf(http.StatusBadRequest, "meta_version %q: want <10-digit unix time>-<40-hex sha>", req.MetaVersion)
	}
	if _, err := c.version(ctx, a.AppName, req.MetaVersion); err != nil {
		return err
	}
	mv := req.MetaVersion
	return c.submit(w, a.AppName, "update", u.name, map[string]any{"meta_version": mv, "from": a.MetaVersion}, func(ctx context.Context, o *opRun) error {
		return c.doUpdate(ctx, o, a.AppName, mv, u.name)
	})
}

// doUpdate rolls the app out to version mv proc by proc; a failure rolls
// back the procs already changed.
func (c *Console) doUpdate(ctx context.Context, o *opRun, name, mv, user string) error {
	a, err := c.app(ctx, name)
	if err != nil {
		return err
	}
	if a.MetaVersion == "" {
		o.msg("app has no running version: deploying %s", mv)
		return c.doDeploy(ctx, o, name, mv, user)
	}
	oldVer, oldSp, err := c.versionSpec(ctx, name, a.MetaVersion)
	if err != nil {
		return err
	}
	ver, sp, err := c.versionSpec(ctx, name, mv)
	if err != nil {
		return err
	}
	if a.AppType == spec.TypeResource {
		a.MetaVersion = mv
		o.msg("resource %s now at %s; existing instances keep their version", name, mv)
		return c.saveApp(ctx, a)
	}
	res, err := c.ensureResources(ctx, o, sp, name, user)
	if err != nil {
		return err
	}
	for _, inst := range res {
		if !contains(a.Resources, inst) {
			a.Resources = append(a.Resources, inst)
		}
	}
	// procs new in this version are deployed; removed ones stop at the end
	na := *a
	na.Procs = map[string]*ProcConf{}
	for pn, pc := range a.Procs {
		if _, ok := sp.Procs[pn]; ok {
			na.Procs[pn] = pc
		}
	}
	for pn := range sp.Procs {
		if na.Procs[pn] == nil {
			na.Procs[pn] = &ProcConf{Deployed: true}
		}
	}
	var done []string
	for _, pn := range sp.Names() {
		if !na.Procs[pn].Deployed {
			continue
		}
		o.proc(pn, OpRunning, nil)
		if err := c.drv.Apply(ctx, procSpec(&na, ver, sp.Procs[pn]), o.progress(pn)); err != nil {
			o.proc(pn, OpFailed, err)
			// roll back the procs this update already changed
			for _, d := range done {
				if op := oldSp.Procs[d]; op != nil && a.Procs[d] != nil && a.Procs[d].Deployed {
					o.msg("%s: rolling back to %s", d, a.MetaVersion)
					if e := c.drv.Apply(context.Background(), procSpec(a, oldVer, op), o.progress(d)); e != nil {
						o.proc(d, OpFailed, fmt.Errorf("rollback: %w", e))
					} else {
						o.proc(d, "rolled back", nil)
					}
				} else {
					_ = c.drv.Remove(context.Background(), name, d)
					o.proc(d, "rolled back", nil)
				}
			}
			if op := oldSp.Procs[pn]; op == nil || a.Procs[pn] == nil {
				_ = c.drv.Remove(context.Background(), name, pn)
			}
			return fmt.Errorf("proc %s: %w; the app stays at %s", pn, err, a.MetaVersion)
		}
		o.proc(pn, OpSucceeded, nil)
		done = append(done, pn)
	}
	for pn := range a.Procs {
		if _, ok := sp.Procs[pn]; !ok {
			o.msg("%s: not in %s: stopping it", pn, mv)
			if err := c.drv.Remove(ctx, name, pn); err != nil {
				return fmt.Errorf("stop proc %s: %w", pn, err)
			}
		}
	}
	na.MetaVersion = mv
	return c.saveApp(ctx, &na)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func (c *Console) undeployApp(w http.ResponseWriter, r *http.Request, ps httprouter.Params, u *caller) error {
	a, err := c.changeableApp(r, ps, u)
	if err != nil {
		return err
	}
	if a.AppType == spec.TypeResource {
		return sdk.Errorf(http.StatusForbidden, "%q is a resource: a resource cannot be undeployed (undeploy its instances' apps instead)", a.AppName)
	}
	return c.submit(w, a.AppName, "undeploy", u.name, nil, func(ctx context.Context, o *opRun) error {
		return c.doUndeploy(ctx, o, a.AppName)
	})
}

// doUndeploy stops every proc of an app and its resource instances and
// forgets the deployment; the registration and versions stay.
func (c *Console) doUndeploy(ctx context.Context, o *opRun, name string) error {
	a, err := c.app(ctx, name)
	if err != nil {
		return err
	}
	var errs []error
	for _, pn := range sortedKeys(a.Procs) {
		o.proc(pn, OpRunning, nil)
		if err := c.drv.Remove(ctx, name, pn); err != nil {
			o.proc(pn, OpFailed, err)
			errs = append(errs, fmt.Errorf("proc %s: %w", pn, err))
			continue
		}
		o.proc(pn, "undeployed", nil)
	}
	for _, ri := range a.Resources {
		o.msg("undeploying resource instance %s", ri)
		if err := c.doUndeploy(ctx, o, ri); err != nil && sdk.StatusOf(err) != http.StatusNotFound {
			errs = append(errs, fmt.Errorf("resource instance %s: %w", ri, err))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	return c.h.Store().Delete(context.Background(), pfxApp+name)
}

// ---- procs ----

func (c *Console) listProcs(w http.ResponseWriter, r *http.Request, ps httprouter.Params, _ *caller) error {
	a, err := c.app(r.Context(), ps.ByName("app"))
	if err != nil {
		return err
	}
	sdk.WriteJSON(w, http.StatusOK, c.view(r.Context(), a).Procs)
	return nil
}

func (c *Console) findProc(r *http.Request, ps httprouter.Params) (*App, *procView, error) {
	a, err := c.app(r.Context(), ps.ByName("app"))
	if err != nil {
		return nil, nil, err
	}
	for _, p := range c.view(r.Context(), a).Procs {
		if p.ProcName == ps.ByName("proc") {
			return a, &p, nil
		}
	}
	return nil, nil, sdk.Errorf(http.StatusNotFound, "app %q has no proc %q", a.AppName, ps.ByName("proc"))
}

func (c *Console) getProc(w http.ResponseWriter, r *http.Request, ps httprouter.Params, _ *caller) error {
	_, p, err := c.findProc(r, ps)
	if err != nil {
		return err
	}
	sdk.WriteJSON(w, http.StatusOK, p)
	return nil
}

func (c *Console) deployProc(w http.ResponseWriter, r *http.Request, ps httprouter.Params, u *caller) error {
	ctx := r.Context()
	a, err := c.changeableApp(r, ps, u)
	if err != nil {
		return err
	}
	var req struct {
		ProcName string `json:"procname"`
	}
	if err := sdk.DecodeJSON(r, &req, 0); err != nil {
		return err
	}
	if a.AppType == spec.TypeResource {
		return sdk.Errorf(http.StatusBadRequest, "%q is a resource: its procs run in its instances", a.AppName)
	}
	sp, _, err := c.currentSpec(ctx, a)
	if err != nil {
		return err
	}
	if sp.Procs[req.ProcName] == nil {
		return sdk.Errorf(http.StatusBadRequest, "app %q has no proc %q (procs: %s)", a.AppName, req.ProcName, strings.Join(sp.Names(), ", "))
	}
	err = c.h.Store().Update(ctx, func(tx sdk.Tx) error {
		var cur App
		if err := txGet(tx, pfxApp+a.AppName, &cur); err != nil {
			return err
		}
		if pc := cur.Procs[req.ProcName]; pc != nil && pc.Deployed {
			return sdk.Errorf(http.StatusConflict, "proc %q of %q is already deployed", req.ProcName, a.AppName)
		}
		if cur.Procs == nil {
			cur.Procs = map[string]*ProcConf{}
		}
		if cur.Procs[req.ProcName] == nil {
			cur.Procs[req.ProcName] = &ProcConf{}
		}
		cur.Procs[req.ProcName].Deployed = true
		return txPut(tx, pfxApp+a.AppName, &cur)
	})
	if err != nil {
		return err
	}
	pn := req.ProcName
	return c.submit(w, a.AppName, "deploy-proc", u.name, map[string]any{"procname": pn}, func(ctx context.Context, o *opRun) error {
		err := c.applyProc(ctx, o, a.AppName, pn)
		if err != nil {
			_ = c.drv.Remove(context.Background(), a.AppName, pn)
			_ = c.setProc(a.AppName, pn, func(pc *ProcConf) { pc.Deployed = false })
		}
		return err
	})
}

func (c *Console) setProc(app, pn string, f func(*ProcConf)) error {
	return c.h.Store().Update(context.Background(), func(tx sdk.Tx) error {
		var cur App
		if err := txGet(tx, pfxApp+app, &cur); err != nil {
			return err
		}
		if cur.Procs == nil {
			cur.Procs = map[string]*ProcConf{}
		}
		if cur.Procs[pn] == nil {
			cur.Procs[pn] = &ProcConf{}
		}
		f(cur.Procs[pn])
		cur.Updated = time.Now().UTC()
		return txPut(tx, pfxApp+app, &cur)
	})
}

func (c *Console) patchProc(w http.ResponseWriter, r *http.Request, ps httprouter.Params, u *caller) error {
	a, p, err := c.changeableProc(r, ps, u)
	if err != nil {
		return err
	}
	var req struct {
		NumInstances *int            `json:"num_instances"`
		CPU          *float64        `json:"cpu"`
		Memory       json.RawMessage `json:"memory"`
	}
	if err := sdk.DecodeJSON(r, &req, 0); err != nil {
		return err
	}
	resize := req.CPU != nil || req.Memory != nil
	switch {
	case req.NumInstances != nil && resize:
		return sdk.Errorf(http.StatusBadRequest, "scale (num_instances) and resize (cpu/memory) cannot be done at once: send two requests")
	case req.NumInstances == nil && !resize:
		return sdk.Errorf(http.StatusBadRequest, "give num_instances, or cpu and/or memory")
	}
	if !p.Deployed {
		return sdk.Errorf(http.StatusConflict, "proc %q of %q is not deployed: POST it to /api/v1/apps/%s/procs/ first", p.ProcName, a.AppName, a.AppName)
	}
	pn := p.ProcName
	if req.NumInstances != nil {
		n := *req.NumInstances
		if n < 0 || n > spec.MaxInstances {
			return sdk.Errorf(http.StatusBadRequest, "num_instances %d out of 0..%d", n, spec.MaxInstances)
		}
		return c.submit(w, a.AppName, "scale", u.name, map[string]any{"procname": pn, "num_instances": n}, func(ctx context.Context, o *opRun) error {
			if err := c.setProc(a.AppName, pn, func(pc *ProcConf) { pc.NumInstances = &n }); err != nil {
				return err
			}
			return c.applyProc(ctx, o, a.AppName, pn)
		})
	}
	var cpu *float64
	var mem *int64
	if req.CPU != nil {
		if err := spec.CheckCPU(*req.CPU); err != nil {
			return sdk.Errorf(http.StatusBadRequest, "%v", err)
		}
		cpu = req.CPU
	}
	if req.Memory != nil {
		var s string
		if err := json.Unmarshal(req.Memory, &s); err != nil {
			var n json.Number
			if err := json.Unmarshal(req.Memory, &n); err != nil {
				return sdk.Errorf(http.StatusBadRequest, "memory: want a size like \"64M\" or a byte count")
			}
			s = n.String()
		}
		m, err := spec.ParseMemory(s)
		if err != nil {
			return sdk.Errorf(http.StatusBadRequest, "%v", err)
		}
		mem = &m
	}
	reqBody := map[string]any{"procname": pn}
	if cpu != nil {
		reqBody["cpu"] = *cpu
	}
	if mem != nil {
		reqBody["memory"] = spec.FormatMemory(*mem)
	}
	return c.submit(w, a.AppName, "resize", u.name, reqBody, func(ctx context.Context, o *opRun) error {
		var before ProcConf
		if err := c.setProc(a.AppName, pn, func(pc *ProcConf) {
			before = *pc
			if cpu != nil {
				pc.CPU = cpu
			}
			if mem != nil {
				pc.Memory = mem
			}
		}); err != nil {
			return err
		}
		err := c.applyProc(ctx, o, a.AppName, pn)
		if err != nil {
			// the driver rolled the instances back: so does the record
			_ = c.setProc(a.AppName, pn, func(pc *ProcConf) { pc.CPU, pc.Memory = before.CPU, before.Memory })
		}
		return err
	})
}

// applyProc applies the app record's current view of one proc.
func (c *Console) applyProc(ctx context.Context, o *opRun, app, pn string) error {
	a, err := c.app(ctx, app)
	if err != nil {
		return err
	}
	sp, ver, err := c.currentSpec(ctx, a)
	if err != nil {
		return err
	}
	p := sp.Procs[pn]
	if p == nil {
		return fmt.Errorf("proc %s is not in %s", pn, ver.MetaVersion)
	}
	o.proc(pn, OpRunning, nil)
	if err := c.drv.Apply(ctx, procSpec(a, ver, p), o.progress(pn)); err != nil {
		o.proc(pn, OpFailed, err)
		return fmt.Errorf("proc %s: %w", pn, err)
	}
	o.proc(pn, OpSucceeded, nil)
	return nil
}

func (c *Console) deleteProc(w http.ResponseWriter, r *http.Request, ps httprouter.Params, u *caller) error {
	a, p, err := c.changeableProc(r, ps, u)
	if err != nil {
		return err
	}
	if !p.Deployed {
		return sdk.Errorf(http.StatusNotFound, "proc %q of %q is not deployed", p.ProcName, a.AppName)
	}
	pn := p.ProcName
	if err := c.setProc(a.AppName, pn, func(pc *ProcConf) { pc.Deployed = false }); err != nil {
		return err
	}
	return c.submit(w, a.AppName, "undeploy-proc", u.name, map[string]any{"procname": pn}, func(ctx context.Context, o *opRun) error {
		o.proc(pn, OpRunning, nil)
		if err := c.drv.Remove(ctx, a.AppName, pn); err != nil {
			o.proc(pn, OpFailed, err)
			return err
		}
		o.proc(pn, "undeployed", nil)
		return nil
	})
}

func (c *Console) procLogs(w http.ResponseWriter, r *http.Request, ps httprouter.Params, _ *caller) error {
	a, p, err := c.findProc(r, ps)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	opt := driver.LogOptions{Instance: q.Get("instance"), Tail: 100}
	if t := q.Get("tail"); t != "" {
		n, err := strconv.Atoi(t)
		if err != nil || n < -1 {
			return sdk.Errorf(http.StatusBadRequest, "tail %q: want a number of lines (-1 for all)", t)
		}
		opt.Tail = n
	}
	switch q.Get("follow") {
	case "", "0", "false":
	case "1", "true":
		opt.Follow = true
	default:
		return sdk.Errorf(http.StatusBadRequest, "follow %q: want true or false", q.Get("follow"))
	}
	if _, ok := c.drv.Status(a.AppName, p.ProcName); !ok {
		return sdk.Errorf(http.StatusNotFound, "proc %q of %q has no instances", p.ProcName, a.AppName)
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if opt.Instance != "" {
		found := false
		st, _ := c.drv.Status(a.AppName, p.ProcName)
		for _, in := range st.Instances {
			found = found || in.ID == opt.Instance
		}
		if !found {
			return sdk.Errorf(http.StatusNotFound, "proc %q has no instance %q", p.ProcName, opt.Instance)
		}
	}
	w.WriteHeader(http.StatusOK)
	ctx := r.Context()
	if opt.Follow {
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		go func() {
			select {
			case <-c.opCtx.Done(): // the plugin instance stops
				cancel()
			case <-c.h.Draining(): // replaced or unloaded: let the swap finish now
				cancel()
			case <-ctx.Done():
			}
		}()
	}
	if err := c.drv.Logs(ctx, a.AppName, p.ProcName, opt, w); err != nil {
		fmt.Fprintf(w, "error: %v\n", err)
	}
	return nil
}

// ---- resources ----

func (c *Console) resourceInstances(w http.ResponseWriter, r *http.Request, ps httprouter.Params, _ *caller) error {
	res := ps.ByName("resource")
	ra, err := c.app(r.Context(), res)
	if err != nil {
		if _, err2 := c.repo(r.Context(), res); err2 != nil {
			return err2
		}
		return err
	}
	if ra.AppType != spec.TypeResource {
		return sdk.Errorf(http.StatusBadRequest, "app %q is a %s, not a resource", res, ra.AppType)
	}
	kvs, err := c.h.Store().List(r.Context(), pfxApp+"resource."+res+".")
	if err != nil {
		return err
	}
	out := []appView{}
	for _, kv := range kvs {
		var a App
		if json.Unmarshal(kv.Value, &a) == nil {
			out = append(out, c.view(r.Context(), &a))
		}
	}
	sdk.WriteJSON(w, http.StatusOK, out)
	return nil
}

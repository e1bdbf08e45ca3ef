package main

import (
	"context"
	"strings"
	"time"

	"github.com/go-kit/kit/sd"
	"github.com/go-kit/kit/sd/consul"
	"github.com/go-kit/kit/sd/etcdv3"
	"github.com/go-kit/kit/sd/eureka"
	"github.com/go-kit/kit/sd/zk"
	"github.com/go-kit/log"
	consulapi "github.com/hashicorp/consul/api"
	"github.com/hudl/fargo"
)

// ---- etcd ------------------------------------------------------------------------------
//
// One go-kit client per role: go-kit's etcdv3 client holds ONE lease and ONE watcher, and
// its Register closes the client's watcher (the Instancer's watch, when shared) and its
// previous lease (another instance's keep-alive).

type etcdBackend struct{ members []string }

func (e *etcdBackend) cluster() string { return "etcd-cluster" }

func (e *etcdBackend) client() (etcdv3.Client, context.CancelFunc, error) {
	machines := make([]string, len(e.members))
	for i, m := range e.members {
		machines[i] = "http://" + m
	}
	ctx, cancel := context.WithCancel(context.Background())
	c, err := etcdv3.NewClient(ctx, machines, etcdv3.ClientOptions{}) // go-kit's defaults: 3 s dial timeout and keep-alive
	if err != nil {
		cancel()
		return nil, nil, err
	}
	return c, cancel, nil
}

func (e *etcdBackend) instancer(svc string, logger log.Logger) (sd.Instancer, func(), error) {
	c, cancel, err := e.client()
	if err != nil {
		return nil, nil, err
	}
	inst, err := etcdv3.NewInstancer(c, "/gokit-cluster/"+svc+"/", logger)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	return inst, func() { inst.Stop(); cancel() }, nil
}

type etcdRegistration struct {
	client  etcdv3.Client
	cancel  context.CancelFunc
	service etcdv3.Service
	logger  log.Logger
	last    *etcdv3.Registrar
}

func (e *etcdBackend) registration(svc, id, instance string, logger log.Logger) (registration, error) {
	c, cancel, err := e.client()
	if err != nil {
		return nil, err
	}
	return &etcdRegistration{client: c, cancel: cancel, logger: logger, service: etcdv3.Service{
		Key:   "/gokit-cluster/" + svc + "/" + id,
		Value: instance,
		TTL:   etcdv3.NewTTLOption(3*time.Second, 10*time.Second), // go-kit's default
	}}, nil
}

func (r *etcdRegistration) try() (bool, string) {
	c := &capture{inner: r.logger}
	r.last = etcdv3.NewRegistrar(r.client, r.service, c)
	r.last.Register()
	return c.outcome(true)
}

func (r *etcdRegistration) deregister() {
	if r.last != nil {
		r.last.Deregister()
	}
}

func (r *etcdRegistration) close() { r.cancel() }

// ---- ZooKeeper -------------------------------------------------------------------------
//
// One go-kit client (one session) per instance: go-kit's zk Deregister deletes the service's
// parent node, not the instance's ephemeral node (it fails while the node has children), so
// an instance really goes away when its client's session ends (Stop).

type zkBackend struct{ members []string }

func (z *zkBackend) cluster() string { return "zk-ensemble" }

func (z *zkBackend) instancer(svc string, logger log.Logger) (sd.Instancer, func(), error) {
	c, err := zk.NewClient(z.members, logger) // go-kit's defaults: 2 s connect, 5 s session timeout
	if err != nil {
		return nil, nil, err
	}
	inst, err := zk.NewInstancer(c, "/gokit-cluster/"+svc, logger)
	if err != nil {
		c.Stop()
		return nil, nil, err
	}
	return inst, func() { inst.Stop(); c.Stop() }, nil
}

type zkRegistration struct {
	client  zk.Client
	service zk.Service
	logger  log.Logger
	last    *zk.Registrar
	stopped bool
}

func (z *zkBackend) registration(svc, id, instance string, logger log.Logger) (registration, error) {
	c, err := zk.NewClient(z.members, logger)
	if err != nil {
		return nil, err
	}
	return &zkRegistration{client: c, logger: logger, service: zk.Service{
		Path: "/gokit-cluster", Name: svc, Data: []byte(instance),
	}}, nil
}

func (r *zkRegistration) try() (bool, string) {
	c := &capture{inner: r.logger}
	r.last = zk.NewRegistrar(r.client, r.service, c)
	r.last.Register()
	return c.outcome(true)
}

func (r *zkRegistration) deregister() {
	if r.last != nil {
		r.last.Deregister() // logs an error (it tries to delete the parent node)
	}
	r.close()
}

func (r *zkRegistration) close() {
	if !r.stopped { // go-kit's zk Stop panics when called twice
		r.stopped = true
		r.client.Stop()
	}
}

// ---- Consul ----------------------------------------------------------------------------
//
// go-kit's consul client wraps one *api.Client, i.e. one agent address: the client agent.

type consulBackend struct{ agent string }

func (c *consulBackend) cluster() string { return "consul-cluster" }

func (c *consulBackend) client() (consul.Client, error) {
	cfg := consulapi.DefaultConfig()
	cfg.Address = c.agent
	api, err := consulapi.NewClient(cfg)
	if err != nil {
		return nil, err
	}
	return consul.NewClient(api), nil
}

func (c *consulBackend) instancer(svc string, logger log.Logger) (sd.Instancer, func(), error) {
	client, err := c.client()
	if err != nil {
		return nil, nil, err
	}
	inst := consul.NewInstancer(client, logger, svc, nil, true)
	return inst, inst.Stop, nil
}

type consulRegistration struct {
	client consul.Client
	reg    *consulapi.AgentServiceRegistration
	logger log.Logger
	last   *consul.Registrar
}

func (c *consulBackend) registration(svc, id, instance string, logger log.Logger) (registration, error) {
	client, err := c.client()
	if err != nil {
		return nil, err
	}
	host, port := splitHostPort(instance)
	return &consulRegistration{client: client, logger: logger, reg: &consulapi.AgentServiceRegistration{
		ID: svc + "-" + id, Name: svc, Address: host, Port: port,
	}}, nil
}

func (r *consulRegistration) try() (bool, string) {
	c := &capture{inner: r.logger}
	r.last = consul.NewRegistrar(r.client, r.reg, c)
	r.last.Register()
	return c.outcome(true)
}

func (r *consulRegistration) deregister() {
	if r.last != nil {
		r.last.Deregister()
	}
}

func (r *consulRegistration) close() {}

// ---- Eureka ----------------------------------------------------------------------------
//
// fargo takes several service URLs and picks one at random for every request (no
// fail-over). go-kit's eureka Registrar logs a failed RegisterInstance and starts its
// heartbeat loop anyway; a failed attempt's Registrar is deregistered (its loop stopped)
// before the next attempt.

type eurekaBackend struct{ urls []string }

func (e *eurekaBackend) cluster() string { return "eureka-peers" }

func (e *eurekaBackend) conn() *fargo.EurekaConnection {
	var config fargo.Config
	config.Eureka.ServiceUrls = e.urls
	config.Eureka.PollIntervalSeconds = 1
	config.Eureka.ConnectTimeoutSeconds = 5
	conn := fargo.NewConnFromConfig(config)
	conn.UseJson = true
	return &conn
}

func (e *eurekaBackend) instancer(svc string, logger log.Logger) (sd.Instancer, func(), error) {
	inst := eureka.NewInstancer(e.conn(), strings.ToUpper(svc), logger)
	return inst, inst.Stop, nil
}

type eurekaRegistration struct {
	conn     *fargo.EurekaConnection
	instance *fargo.Instance
	logger   log.Logger
	last     *eureka.Registrar
}

func (e *eurekaBackend) registration(svc, id, instance string, logger log.Logger) (registration, error) {
	host, port := splitHostPort(instance)
	app := strings.ToUpper(svc)
	return &eurekaRegistration{conn: e.conn(), logger: logger, instance: &fargo.Instance{
		InstanceId:       svc + "-" + id,
		HostName:         host,
		App:              app,
		IPAddr:           host,
		VipAddress:       strings.ToLower(app),
		SecureVipAddress: strings.ToLower(app),
		Status:           fargo.UP,
		Port:             port,
		PortEnabled:      true,
		DataCenterInfo:   fargo.DataCenterInfo{Name: fargo.MyOwn},
		LeaseInfo:        fargo.LeaseInfo{RenewalIntervalInSecs: 1, DurationInSecs: 10},
	}}, nil
}

func (r *eurekaRegistration) try() (bool, string) {
	c := &capture{inner: r.logger}
	reg := eureka.NewRegistrar(r.conn, r.instance, c)
	reg.Register()
	ok, msg := c.outcome(false)
	if !ok {
		reg.Deregister() // stop the failed Registrar's heartbeat loop
		return false, msg
	}
	r.last = reg
	return true, ""
}

func (r *eurekaRegistration) deregister() {
	if r.last != nil {
		r.last.Deregister()
	}
}

func (r *eurekaRegistration) close() {}

func splitHostPort(s string) (string, int) {
	i := strings.LastIndex(s, ":")
	port := 0
	for _, ch := range s[i+1:] {
		port = port*10 + int(ch-'0')
	}
	return s[:i], port
}

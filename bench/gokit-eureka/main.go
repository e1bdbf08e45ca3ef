// Command gokit-eureka is go-kit's own Eureka backend (sd/eureka v0.13.0 over fargo v1.4.0),
// driven from sd-eureka's interop test (sd-eureka/tests/gokit_interop.rs) against the real
// Eureka server:
//
//	gokit-eureka register -eureka URL -app APP -id ID -port PORT [-lease S] [-renew S]
//	    registers with go-kit's eureka.Registrar, prints "registered", renews until stdin
//	    closes, then deregisters and prints "deregistered".
//	gokit-eureka watch -eureka URL -app APP -want host:port,... [-timeout D]
//	    runs go-kit's eureka.Instancer (fargo polling every second) until it publishes
//	    exactly the wanted instances; prints them as JSON and exits 0, or exits 1 on timeout.
//	gokit-eureka -scenarios eureka [-quick]
//	    the go-kit side of bench/compare.sh's Eureka row (see bench.go).
//
// A module of its own (beside bench/gokit) because fargo's dependencies need golang.org/x/net
// and golang.org/x/sys newer than go-kit pins to link with this Go.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/go-kit/kit/sd"
	"github.com/go-kit/kit/sd/eureka"
	"github.com/go-kit/log"
	"github.com/hudl/fargo"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: gokit-eureka register|watch [flags], or -scenarios eureka [-quick]")
		os.Exit(2)
	}
	if strings.HasPrefix(os.Args[1], "-") {
		os.Exit(bench(os.Args[1:]))
	}
	logger := log.With(log.NewLogfmtLogger(os.Stderr), "ts", log.DefaultTimestamp)
	switch os.Args[1] {
	case "register":
		os.Exit(register(os.Args[2:], logger))
	case "watch":
		os.Exit(watch(os.Args[2:], logger))
	default:
		fmt.Fprintf(os.Stderr, "unknown command %q (register or watch)\n", os.Args[1])
		os.Exit(2)
	}
}

func connection(url string) *fargo.EurekaConnection {
	var config fargo.Config
	config.Eureka.ServiceUrls = []string{url}
	config.Eureka.PollIntervalSeconds = 1
	config.Eureka.ConnectTimeoutSeconds = 5
	conn := fargo.NewConnFromConfig(config)
	conn.UseJson = true
	return &conn
}

func register(args []string, logger log.Logger) int {
	fs := flag.NewFlagSet("register", flag.ExitOnError)
	url := fs.String("eureka", "http://127.0.0.1:18761/eureka", "Eureka base URL")
	app := fs.String("app", "", "application name")
	id := fs.String("id", "", "instance id")
	port := fs.Int("port", 0, "port")
	lease := fs.Int("lease", 10, "lease duration, seconds")
	renew := fs.Int("renew", 1, "renewal interval, seconds")
	fs.Parse(args)
	if *app == "" || *id == "" || *port == 0 {
		fmt.Fprintln(os.Stderr, "register: -app, -id and -port are required")
		return 2
	}
	instance := &fargo.Instance{
		InstanceId:       *id,
		HostName:         "127.0.0.1",
		App:              *app,
		IPAddr:           "127.0.0.1",
		VipAddress:       strings.ToLower(*app),
		SecureVipAddress: strings.ToLower(*app),
		Status:           fargo.UP,
		Port:             *port,
		PortEnabled:      true,
		DataCenterInfo:   fargo.DataCenterInfo{Name: fargo.MyOwn},
		LeaseInfo: fargo.LeaseInfo{
			RenewalIntervalInSecs: int32(*renew),
			DurationInSecs:        int32(*lease),
		},
	}
	instance.SetMetadataString("gokit", "true")
	registrar := eureka.NewRegistrar(connection(*url), instance, log.With(logger, "component", "registrar"))
	registrar.Register()
	fmt.Println("registered")
	// Renew until the parent closes stdin.
	bufio.NewReader(os.Stdin).ReadString('\n')
	registrar.Deregister()
	fmt.Println("deregistered")
	return 0
}

func watch(args []string, logger log.Logger) int {
	fs := flag.NewFlagSet("watch", flag.ExitOnError)
	url := fs.String("eureka", "http://127.0.0.1:18761/eureka", "Eureka base URL")
	app := fs.String("app", "", "application name")
	want := fs.String("want", "", "comma-separated host:port list to wait for (empty: no instance)")
	timeout := fs.Duration("timeout", 60*time.Second, "give up after")
	fs.Parse(args)
	wanted := []string{}
	if *want != "" {
		wanted = strings.Split(*want, ",")
	}
	sort.Strings(wanted)
	instancer := eureka.NewInstancer(connection(*url), *app, log.With(logger, "component", "instancer"))
	defer instancer.Stop()
	events := make(chan sd.Event, 16)
	instancer.Register(events)
	defer instancer.Deregister(events)
	deadline := time.After(*timeout)
	var last sd.Event
	for {
		select {
		case e := <-events:
			last = e
			got := append([]string(nil), e.Instances...)
			sort.Strings(got)
			if e.Err == nil && strings.Join(got, ",") == strings.Join(wanted, ",") {
				out, _ := json.Marshal(map[string]interface{}{"instances": got})
				fmt.Println(string(out))
				return 0
			}
		case <-deadline:
			fmt.Fprintf(os.Stderr, "watch: %v not seen within %v; last event: %+v\n", wanted, *timeout, last)
			return 1
		}
	}
}

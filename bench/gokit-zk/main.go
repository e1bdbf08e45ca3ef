// Command gokit-zk drives go-kit's own sd/zk package (v0.13.0) against a ZooKeeper server,
// for sdkit's interoperability test (sd-zk/tests/gokit_interop.rs):
//
//	gokit-zk register <servers> <path> <service> <data>
//	    go-kit's zk.Registrar registers <data> (e.g. 10.0.0.1:80) under <path>/<service>,
//	    prints "REGISTERED", and keeps the session until its standard input closes; then it
//	    calls Deregister (which fails: go-kit deletes the parent, ZK-6) and Stop (which ends
//	    the session and with it the node), and prints "STOPPED".
//	gokit-zk watch <servers> <path> <instance> <seconds>
//	    go-kit's zk.Instancer watches <path>; prints every event as "EVENT <instances...>" and
//	    exits 0 with "SEEN <instance>" once an event holds <instance>, 1 after <seconds>.
//
// <servers> is a comma-separated host:port list.
package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/go-kit/kit/sd"
	"github.com/go-kit/kit/sd/zk"
	"github.com/go-kit/log"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "gokit-zk: "+format+"\n", args...)
	os.Exit(2)
}

func main() {
	if len(os.Args) != 6 {
		fail("usage: gokit-zk register <servers> <path> <service> <data> | watch <servers> <path> <instance> <seconds>")
	}
	logger := log.NewLogfmtLogger(os.Stderr)
	servers := strings.Split(os.Args[2], ",")
	client, err := zk.NewClient(servers, logger, zk.SessionTimeout(2*time.Second))
	if err != nil {
		fail("NewClient: %v", err)
	}
	// go-kit's Stop panics when called twice (ZK-7): each branch calls it once.
	switch os.Args[1] {
	case "register":
		service := zk.Service{Path: os.Args[3], Name: os.Args[4], Data: []byte(os.Args[5])}
		registrar := zk.NewRegistrar(client, service, logger)
		registrar.Register()
		fmt.Println("REGISTERED")
		// Hold the session until the parent closes our standard input.
		reader := bufio.NewReader(os.Stdin)
		for {
			if _, err := reader.ReadString('\n'); err != nil {
				break
			}
		}
		registrar.Deregister()
		client.Stop()
		fmt.Println("STOPPED")
	case "watch":
		want := os.Args[4]
		seconds, err := strconv.Atoi(os.Args[5])
		if err != nil {
			fail("seconds: %v", err)
		}
		instancer, err := zk.NewInstancer(client, os.Args[3], logger)
		if err != nil {
			fail("NewInstancer: %v", err)
		}
		defer client.Stop()
		defer instancer.Stop()
		events := make(chan sd.Event, 16)
		instancer.Register(events)
		deadline := time.After(time.Duration(seconds) * time.Second)
		for {
			select {
			case ev := <-events:
				fmt.Printf("EVENT %s err=%v\n", strings.Join(ev.Instances, " "), ev.Err)
				for _, i := range ev.Instances {
					if i == want {
						fmt.Printf("SEEN %s\n", want)
						return
					}
				}
			case <-deadline:
				fmt.Printf("NOT SEEN %s\n", want)
				os.Exit(1)
			}
		}
	default:
		client.Stop()
		fail("unknown mode %q", os.Args[1])
	}
}

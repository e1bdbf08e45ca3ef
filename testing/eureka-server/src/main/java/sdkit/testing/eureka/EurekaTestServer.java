package sdkit.testing.eureka;

import org.springframework.boot.SpringApplication;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.cloud.netflix.eureka.server.EnableEurekaServer;

/** Standalone Eureka server used only by this workspace's integration tests. */
@SpringBootApplication
@EnableEurekaServer
public class EurekaTestServer {
  public static void main(String[] args) {
    SpringApplication.run(EurekaTestServer.class, args);
  }
}

// Reads one incident through snctld's local proxy, Node's standard library only.
//
//   node proxy_incident.mjs /run/snctld/proxy/prod.sock INC0010001
//
// The proxy puts the token on the request: this process holds none.
import http from "node:http";

const [socketPath, number] = process.argv.slice(2);
const query = new URLSearchParams({ sysparm_query: `number=${number}`, sysparm_limit: "1" });

const request = http.get(
  { socketPath, path: `/api/now/table/incident?${query}`, headers: { Accept: "application/json" } },
  (response) => {
    let body = "";
    response.setEncoding("utf8");
    response.on("data", (chunk) => (body += chunk));
    response.on("end", () => {
      if (response.statusCode !== 200) {
        console.error(`HTTP ${response.statusCode}: ${body}`);
        process.exit(1);
      }
      for (const record of JSON.parse(body).result) {
        console.log(record.number, record.short_description);
      }
    });
  },
);
request.on("error", (error) => {
  console.error(`cannot reach the proxy at ${socketPath}: ${error.message}`);
  process.exit(1);
});

// What grpcurl does, with grpc-js: list the services, describe one, call a method by name,
// all from server reflection (grpc.reflection.v1) alone. Prints one JSON object.
// Usage: node reflect.js HOST:PORT SERVICE METHOD REQUEST_JSON
'use strict';

const grpc = require('@grpc/grpc-js');
const { GrpcReflection } = require('grpc-js-reflection-client');

async function main() {
  const [address, service, method, requestJson] = process.argv.slice(2);
  const credentials = grpc.credentials.createInsecure();
  const reflection = new GrpcReflection(address, credentials, {}, 'v1');
  const deadline = () => ({ deadline: Date.now() + 10000 });
  const services = (await reflection.listServices('*', deadline())).sort();
  const methods = (await reflection.listMethods(service, deadline())).map((m) => m.name).sort();
  const descriptor = await reflection.getDescriptorBySymbol(service, deadline());
  const loaded = descriptor.getPackageObject({ keepCase: true, longs: String, defaults: false });
  const Client = service.split('.').reduce((node, key) => node[key], loaded);
  const client = new Client(address, credentials);
  try {
    const response = await new Promise((resolve, reject) => {
      client[method](JSON.parse(requestJson), deadline(), (error, reply) =>
        error ? reject(error) : resolve(reply),
      );
    });
    process.stdout.write(JSON.stringify({ services, methods, response }) + '\n');
  } finally {
    client.close();
  }
}

// The reflection client keeps its channel open: exit once done rather than wait for it idling.
main().then(() => process.exit(0), (error) => {
  process.stderr.write(`${error.stack || error}\n`);
  process.exit(1);
});

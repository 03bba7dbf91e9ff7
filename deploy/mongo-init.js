// Initiates the MongoDB replica set once and waits until it has a writable primary.
//
// Idempotent: safe to run on every `docker-compose up` (and concurrently with itself).
// Run with mongosh against one member, directly (not through the replica-set URI):
//   mongosh --quiet "mongodb://mongo1:27017/?directConnection=true" deploy/mongo-init.js
// Settings (environment of the mongosh process):
//   RS_NAME          replica set name (default rs0; must match mongod's --replSet)
//   RS_MEMBERS       comma-separated host:port list (default mongo1..3:27017); the first member
//                    gets a higher priority so it is the usual primary
//   RS_WAIT_SECONDS  how long to wait for a primary (default 120)
const name = process.env.RS_NAME || "rs0";
const hosts = (process.env.RS_MEMBERS || "mongo1:27017,mongo2:27017,mongo3:27017")
  .split(",")
  .map((h) => h.trim())
  .filter((h) => h.length > 0);
const waitSeconds = Number(process.env.RS_WAIT_SECONDS || "120");

const config = {
  _id: name,
  members: hosts.map((host, i) => ({ _id: i, host, priority: i === 0 ? 2 : 1 })),
};

function isNotYetInitialized(err) {
  return err.codeName === "NotYetInitialized" || err.code === 94;
}

function isAlreadyInitialized(err) {
  return err.codeName === "AlreadyInitialized" || err.code === 23;
}

let initiated = false;
try {
  const status = rs.status();
  if (status.set !== name) {
    print(`replica set is named ${status.set}, expected ${name}`);
    quit(1);
  }
  print(`replica set ${name} already initiated`);
} catch (err) {
  if (!isNotYetInitialized(err)) throw err;
  try {
    rs.initiate(config);
    initiated = true;
    print(`replica set ${name} initiated with ${hosts.join(", ")}`);
  } catch (initErr) {
    // Another runner initiated it between our status() and initiate(): fine.
    if (!isAlreadyInitialized(initErr)) throw initErr;
    print(`replica set ${name} was initiated concurrently`);
  }
}

const deadline = Date.now() + waitSeconds * 1000;
for (;;) {
  let primary = null;
  try {
    primary = rs.status().members.find((m) => m.stateStr === "PRIMARY") || null;
  } catch (err) {
    if (!isNotYetInitialized(err)) throw err;
  }
  if (primary !== null) {
    print(`primary is ${primary.name}${initiated ? " (new replica set)" : ""}`);
    break;
  }
  if (Date.now() > deadline) {
    print(`no primary for replica set ${name} after ${waitSeconds}s`);
    quit(1);
  }
  sleep(1000);
}

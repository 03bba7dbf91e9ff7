// Initiates the MongoDB replica set once, waits until it has a writable primary, and makes
// majority the default write concern.
//
// Idempotent: safe to run on every `docker-compose up` (and concurrently with itself).
// Run with mongosh against one member, directly (not through the replica-set URI):
//   mongosh --quiet "mongodb://mongo1:27017/?directConnection=true" deploy/mongo-init.js
// Settings (environment of the mongosh process):
//   RS_NAME          replica set name (default rs0; must match mongod's --replSet)
//   RS_MEMBERS       comma-separated host:port list (default mongo1..3:27017); the first member
//                    gets a higher priority so it is the usual primary
//   RS_WAIT_SECONDS  how long to wait for each step (default 120)
//   RS_WAIT_FOR      "primary" (default): done once there is a primary; "all": also wait until
//                    every member is PRIMARY or SECONDARY (the GitHub workflow, whose tests
//                    need the secondaries)
const name = process.env.RS_NAME || "rs0";
const hosts = (process.env.RS_MEMBERS || "mongo1:27017,mongo2:27017,mongo3:27017")
  .split(",")
  .map((h) => h.trim())
  .filter((h) => h.length > 0);
const waitSeconds = Number(process.env.RS_WAIT_SECONDS || "120");
const waitFor = process.env.RS_WAIT_FOR || "primary";

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

// Polls `check` every second until it returns something other than null; quits on timeout.
function waitUntil(what, check) {
  const deadline = Date.now() + waitSeconds * 1000;
  for (;;) {
    let found = null;
    try {
      found = check();
    } catch (err) {
      if (!isNotYetInitialized(err)) throw err;
    }
    if (found !== null) return found;
    if (Date.now() > deadline) {
      print(`replica set ${name}: no ${what} after ${waitSeconds}s`);
      quit(1);
    }
    sleep(1000);
  }
}

const primary = waitUntil("primary", () =>
  rs.status().members.find((m) => m.stateStr === "PRIMARY") || null,
);
print(`primary is ${primary.name}${initiated ? " (new replica set)" : ""}`);

// Majority by default: a write is acknowledged once most members have it, so an election never
// rolls it back (the event log asks for it on every append anyway). The first member has the
// highest priority, so it takes over as primary; the setting is made there. Idempotent.
waitUntil("writable primary on this member", () => (db.hello().isWritablePrimary ? true : null));
db.adminCommand({ setDefaultRWConcern: 1, defaultWriteConcern: { w: "majority" } });
print("default write concern: majority");

if (waitFor === "all") {
  const ready = (m) => m.stateStr === "PRIMARY" || m.stateStr === "SECONDARY";
  waitUntil("PRIMARY or SECONDARY state on every member", () =>
    rs.status().members.every(ready) ? true : null,
  );
  print(`every member of ${name} is PRIMARY or SECONDARY`);
}

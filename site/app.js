// Courier's browser chat: plain ES module, no build step, no external resources.
// It logs in over gochat's HTTP API, shows each room's recent history, then keeps
// one WebSocket that carries every room it joined and the user's private messages
// (Courier's ops 7-12). It remembers the last seq of every stream and resumes from
// there on reconnect, so a dropped connection loses nothing and repeats nothing.

const $ = (id) => document.getElementById(id);
const state = {
  config: null,
  token: sessionStorage.getItem("courier.token"),
  me: null,
  socket: null,
  retry: 0,
  rooms: JSON.parse(sessionStorage.getItem("courier.rooms") || "[1]"),
  current: null, // "room:N" or "user:ID"
  conversations: new Map(), // key -> { title, messages: [], unread, seen: Set }
  members: new Map(), // roomId -> { userId: name }
  pending: new Map(), // clientMsgId -> text
  positions: new Map(), // stream -> { epoch, seq }: where to resume after a reconnect
  holdReconnect: 0, // test hook: extra delay before reconnecting
};

// For tests and the curious: drop the connection and reconnect after `ms`.
window.courierDebug = {
  dropConnection(ms = 0) {
    state.holdReconnect = ms;
    if (state.socket) state.socket.close();
  },
  get connected() {
    return Boolean(state.socket && state.socket.readyState === WebSocket.OPEN);
  },
};

async function loadConfig() {
  const response = await fetch("/config.json");
  const c = await response.json();
  const host = location.hostname || "localhost";
  return {
    api: c.apiUrl || `${location.protocol}//${host}:${c.apiPort}`,
    ws: c.wsUrl || `${location.protocol === "https:" ? "wss" : "ws"}://${host}:${c.wsPort}/ws`,
  };
}

async function api(path, body) {
  try {
    const response = await fetch(state.config.api + path, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    return await response.json();
  } catch (e) {
    return { code: 1, message: "The server cannot be reached. Check your connection and try again." };
  }
}

function conversation(key, title) {
  if (!state.conversations.has(key)) {
    state.conversations.set(key, { title, messages: [], unread: 0, seen: new Set() });
  }
  return state.conversations.get(key);
}

function setConnection(text, online) {
  const el = $("connection");
  el.textContent = text;
  el.classList.toggle("online", online);
}

function showError(id, text) {
  $(id).textContent = text || "";
}

async function authenticate(path) {
  showError("login-error", "");
  const userName = $("user-name").value.trim();
  const passWord = $("password").value;
  if (!userName || !passWord) {
    showError("login-error", "Enter a user name and a password.");
    return;
  }
  const answer = await api(path, { userName, passWord });
  if (answer.code !== 0) {
    showError("login-error", answer.message);
    return;
  }
  state.token = answer.data;
  sessionStorage.setItem("courier.token", state.token);
  // Not left in the page for whoever sits down next once the session ends.
  $("password").value = "";
  await enterChat();
}

async function enterChat() {
  const answer = await api("/user/checkAuth", { authToken: state.token });
  if (answer.code !== 0) {
    sessionStorage.removeItem("courier.token");
    state.token = null;
    $("login-view").hidden = false;
    $("chat-view").hidden = true;
    return;
  }
  state.me = answer.data;
  $("me").textContent = `as ${state.me.userName}`;
  $("login-view").hidden = true;
  $("chat-view").hidden = false;
  for (const room of state.rooms) conversation(`room:${room}`, `Room ${room}`);
  select(`room:${state.rooms[0]}`);
  for (const room of state.rooms) await loadRoomHistory(room);
  connect();
}

function connect() {
  setConnection(state.retry ? "reconnecting…" : "connecting…", false);
  const socket = new WebSocket(state.config.ws);
  state.socket = socket;
  socket.onopen = () => {
    // Resume every stream from the last message seen: nothing missed, nothing twice.
    const first = state.rooms[0];
    socket.send(
      JSON.stringify({
        authToken: state.token,
        roomId: first,
        since: since(`room:${first}`),
        inboxSince: since(`user:${state.me.userId}`),
      }),
    );
    for (const room of state.rooms.slice(1)) {
      socket.send(JSON.stringify({ op: 10, roomId: room, since: since(`room:${room}`) }));
    }
    state.retry = 0;
    setConnection("online", true);
  };
  socket.onmessage = (event) => {
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      return;
    }
    onFrame(frame);
  };
  socket.onclose = (event) => {
    if (state.socket !== socket) return;
    state.socket = null;
    if (!state.token) return;
    if (event.code === 1008 && /session/i.test(event.reason)) {
      logout();
      showError("login-error", "Your session ended. Please log in again.");
      return;
    }
    const delay = Math.min(30000, 500 * 2 ** state.retry++) + state.holdReconnect;
    state.holdReconnect = 0;
    setConnection(`offline — retrying in ${Math.round(delay / 1000)} s`, false);
    setTimeout(() => state.token && connect(), delay);
  };
}

function onFrame(frame) {
  switch (frame.op) {
    case 2: {
      const peer = frame.fromUserId === state.me.userId ? frame.toUserId : frame.fromUserId;
      const name = frame.fromUserId === state.me.userId ? frame.toUserName : frame.fromUserName;
      addMessage(`user:${peer}`, `${name} (private)`, frame);
      break;
    }
    case 3:
      addMessage(`room:${frame.roomId}`, `Room ${frame.roomId}`, frame);
      break;
    case 5:
      state.members.set(frame.roomId, frame.roomUserInfo || {});
      if (state.current === `room:${frame.roomId}`) renderMembers();
      break;
    case 8:
      state.pending.delete(frame.clientMsgId);
      break;
    case 9:
      showError("chat-error", frame.message);
      break;
    default:
      break;
  }
}

function remember(frame) {
  if (!frame.stream || !frame.seq) return;
  const known = state.positions.get(frame.stream);
  if (!known || frame.seq > known.seq) state.positions.set(frame.stream, { epoch: frame.epoch || "", seq: frame.seq });
}

function since(stream) {
  const p = state.positions.get(stream);
  return p ? { epoch: p.epoch, seq: p.seq } : { epoch: "", seq: 0 };
}

// The newest page of a room's history, shown before live traffic.
async function loadRoomHistory(room) {
  const answer = await api("/history/room", { authToken: state.token, roomId: room, limit: 50 });
  if (answer.code !== 0) return;
  const frames = (answer.data.messages || []).slice().reverse();
  for (const frame of frames) addMessage(`room:${room}`, `Room ${room}`, frame, true);
}

function addMessage(key, title, frame, old = false) {
  remember(frame);
  const c = conversation(key, title);
  if (frame.msgId && c.seen.has(frame.msgId)) return;
  if (frame.msgId) c.seen.add(frame.msgId);
  c.messages.push(frame);
  if (key === state.current) {
    renderMessage(frame);
  } else if (!old) {
    c.unread += 1;
  }
  renderRooms();
}

function renderRooms() {
  const list = $("rooms");
  list.replaceChildren();
  for (const [key, c] of state.conversations) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.textContent = c.title;
    button.setAttribute("aria-current", String(key === state.current));
    if (c.unread) {
      const badge = document.createElement("span");
      badge.className = "unread";
      badge.textContent = c.unread;
      badge.setAttribute("aria-label", `${c.unread} unread`);
      button.append(badge);
    }
    button.onclick = () => select(key);
    li.append(button);
    if (key.startsWith("room:") && state.rooms.length > 1) {
      const leave = document.createElement("button");
      leave.className = "secondary";
      leave.textContent = "Leave";
      leave.setAttribute("aria-label", `Leave ${c.title}`);
      leave.onclick = () => leaveRoom(Number(key.slice(5)));
      li.append(leave);
    }
    list.append(li);
  }
}

function renderMembers() {
  const list = $("members");
  list.replaceChildren();
  const room = state.current && state.current.startsWith("room:") ? Number(state.current.slice(5)) : null;
  const members = room ? state.members.get(room) || {} : {};
  $("online-count").textContent = room ? `(${Object.keys(members).length})` : "";
  for (const [id, name] of Object.entries(members)) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.textContent = Number(id) === state.me.userId ? `${name} (you)` : name;
    button.disabled = Number(id) === state.me.userId;
    button.title = `Private chat with ${name}`;
    button.onclick = () => {
      conversation(`user:${id}`, `${name} (private)`);
      select(`user:${id}`);
    };
    li.append(button);
    list.append(li);
  }
}

function renderMessage(frame) {
  const li = document.createElement("li");
  li.classList.toggle("mine", frame.fromUserId === state.me.userId);
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = `${frame.fromUserName} · ${frame.createTime}`;
  const text = document.createElement("span");
  text.textContent = frame.msg;
  li.append(meta, text);
  $("messages").append(li);
  li.scrollIntoView({ block: "end" });
}

// Scroll-back: the page of history before the oldest message shown.
async function loadOlder() {
  const key = state.current;
  const c = state.conversations.get(key);
  if (!c) return;
  const oldest = c.messages.reduce((min, f) => (f.seq && f.seq < min ? f.seq : min), Infinity);
  const body = { authToken: state.token, limit: 50 };
  if (Number.isFinite(oldest)) body.beforeSeq = oldest;
  const id = Number(key.slice(5));
  const answer = key.startsWith("room:")
    ? await api("/history/room", { ...body, roomId: id })
    : await api("/history/private", { ...body, userId: id });
  if (answer.code !== 0) {
    showError("chat-error", answer.message);
    return;
  }
  const older = (answer.data.messages || []).filter((f) => !c.seen.has(f.msgId));
  if (older.length === 0) {
    $("older-button").textContent = "No older messages";
    $("older-button").disabled = true;
    return;
  }
  for (const f of older) c.seen.add(f.msgId);
  c.messages.unshift(...older.reverse());
  select(key);
  $("messages").firstElementChild?.scrollIntoView({ block: "start" });
}

function select(key) {
  state.current = key;
  const c = conversation(key, key);
  c.unread = 0;
  $("conversation-title").textContent = c.title;
  $("older-button").textContent = "Load older messages";
  $("older-button").disabled = false;
  $("messages").replaceChildren();
  for (const frame of c.messages) renderMessage(frame);
  renderRooms();
  renderMembers();
  $("message").focus();
}

function send(text) {
  if (!state.socket || state.socket.readyState !== WebSocket.OPEN) {
    showError("chat-error", "Not connected; your message was not sent. It will work again once reconnected.");
    return false;
  }
  const clientMsgId = `${Date.now()}-${Math.random().toString(36).slice(2)}`;
  const frame = { op: 7, msg: text, clientMsgId };
  if (state.current.startsWith("room:")) {
    frame.roomId = Number(state.current.slice(5));
  } else {
    frame.toUserId = Number(state.current.slice(5));
    frame.roomId = state.rooms[0];
  }
  state.pending.set(clientMsgId, text);
  state.socket.send(JSON.stringify(frame));
  return true;
}

async function joinRoom(room) {
  conversation(`room:${room}`, `Room ${room}`);
  select(`room:${room}`);
  if (!state.rooms.includes(room)) {
    state.rooms.push(room);
    sessionStorage.setItem("courier.rooms", JSON.stringify(state.rooms));
    await loadRoomHistory(room);
    if (state.socket && state.socket.readyState === WebSocket.OPEN) {
      state.socket.send(JSON.stringify({ op: 10, roomId: room, since: since(`room:${room}`) }));
    }
  }
}

function leaveRoom(room) {
  state.rooms = state.rooms.filter((r) => r !== room);
  sessionStorage.setItem("courier.rooms", JSON.stringify(state.rooms));
  if (state.socket && state.socket.readyState === WebSocket.OPEN) {
    state.socket.send(JSON.stringify({ op: 11, roomId: room }));
  }
  state.conversations.delete(`room:${room}`);
  state.positions.delete(`room:${room}`);
  select(`room:${state.rooms[0]}`);
}

async function logout() {
  const token = state.token;
  state.token = null;
  sessionStorage.removeItem("courier.token");
  if (state.socket) state.socket.close();
  state.socket = null;
  if (token) await api("/user/logout", { authToken: token });
  state.conversations.clear();
  state.positions.clear();
  $("chat-view").hidden = true;
  $("login-view").hidden = false;
  setConnection("offline", false);
}

$("login-form").onsubmit = (event) => {
  event.preventDefault();
  authenticate("/user/login");
};
$("register-button").onclick = () => authenticate("/user/register");
$("logout-button").onclick = () => logout();
$("older-button").onclick = () => loadOlder();
$("send-form").onsubmit = (event) => {
  event.preventDefault();
  const text = $("message").value.trim();
  if (!text) return;
  if (new TextEncoder().encode(text).length > 4000) {
    showError("chat-error", "That message is longer than 4,000 bytes; please shorten it.");
    return;
  }
  showError("chat-error", "");
  if (send(text)) $("message").value = "";
};
$("join-form").onsubmit = (event) => {
  event.preventDefault();
  const room = Number($("join-room").value);
  if (Number.isInteger(room) && room > 0) joinRoom(room);
  $("join-room").value = "";
};

state.config = await loadConfig();
if (state.token) await enterChat();

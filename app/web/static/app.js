// Assistant web page: sign in with Google, conversations, streamed chat, sign out.
// Plain JavaScript served from 'self' (no inline script: the page runs under a strict CSP).
//
// Tokens: the access token lives only in this script's memory. The refresh token is an
// HttpOnly cookie scoped to /auth that scripts cannot read; POST /auth/refresh trades it
// for a new access token on load and shortly before the access token expires.
"use strict";

(function () {
  const state = {
    accessToken: null,
    refreshTimer: null,
    user: null,
    conversations: [],
    currentId: null,
    sending: false,
  };

  const $ = (id) => document.getElementById(id);
  const views = { loading: $("loading"), signedOut: $("signed-out"), signedIn: $("signed-in") };

  function show(view) {
    for (const [name, element] of Object.entries(views)) element.hidden = name !== view;
    const signedIn = view === "signedIn";
    $("sign-out").hidden = !signedIn;
    $("user-email").hidden = !signedIn;
  }

  function showError(elementId, message) {
    const element = $(elementId);
    element.textContent = message || "";
    element.hidden = !message;
  }

  // --- Tokens -------------------------------------------------------------------------

  async function refreshAccessToken() {
    let response;
    try {
      response = await fetch("/auth/refresh", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: "{}",
      });
    } catch (error) {
      return false;
    }
    if (!response.ok) return false;
    const data = await response.json();
    if (!data.accessToken) return false;
    state.accessToken = data.accessToken;
    scheduleRefresh(Number(data.expiresIn) || 900);
    return true;
  }

  function scheduleRefresh(expiresInSeconds) {
    clearTimeout(state.refreshTimer);
    // Renew a minute early (or at 80 % of very short lifetimes).
    const delay = Math.max(5, Math.min(expiresInSeconds - 60, expiresInSeconds * 0.8)) * 1000;
    state.refreshTimer = setTimeout(async () => {
      if (!(await refreshAccessToken())) signedOut("Your session ended. Please sign in again.");
    }, delay);
  }

  async function api(path, options = {}, retried = false) {
    const headers = Object.assign({ Accept: "application/json" }, options.headers || {});
    if (state.accessToken) headers.Authorization = "Bearer " + state.accessToken;
    if (options.json !== undefined) {
      headers["Content-Type"] = "application/json";
      options = Object.assign({}, options, { body: JSON.stringify(options.json) });
    }
    const response = await fetch(path, Object.assign({}, options, { headers, credentials: "same-origin" }));
    if (response.status === 401 && !retried && (await refreshAccessToken())) {
      return api(path, options, true);
    }
    if (response.status === 401) {
      signedOut("Your session ended. Please sign in again.");
      throw new Error("signed out");
    }
    return response;
  }

  async function errorMessage(response) {
    try {
      const data = await response.json();
      if (data && data.error) return data.error;
    } catch (error) {
      // not JSON: fall through to the status line
    }
    return "Request failed (HTTP " + response.status + ")";
  }

  // --- Sign in / out ------------------------------------------------------------------

  function signedOut(message) {
    clearTimeout(state.refreshTimer);
    state.accessToken = null;
    state.user = null;
    state.conversations = [];
    state.currentId = null;
    $("conversation-list").replaceChildren();
    clearMessages();
    showError("signin-error", message);
    $("signin-retry-signout").hidden = true;
    show("signedOut");
  }

  const LOGOUT_PENDING = "assistantapp.logoutPending";

  // Ends the server session. The refresh cookie alone is enough (an expired access token
  // after sleep must not keep the session alive); 401 means there was no session left.
  async function endServerSession() {
    try {
      const response = await fetch("/auth/logout", {
        method: "POST",
        credentials: "same-origin",
        headers: Object.assign(
          { "Content-Type": "application/json", Accept: "application/json" },
          state.accessToken ? { Authorization: "Bearer " + state.accessToken } : {}),
        body: "{}",
      });
      return response.ok || response.status === 401;
    } catch (error) {
      return false;
    }
  }

  async function signOut() {
    const ended = (await endServerSession()) || (await endServerSession());
    if (ended) {
      sessionStorage.removeItem(LOGOUT_PENDING);
      signedOut("");
      return;
    }
    // The server did not confirm: never sign back in silently from this tab, retry the
    // logout on the next load, and tell the person the session may still be alive.
    sessionStorage.setItem(LOGOUT_PENDING, "1");
    signedOut("Signing out could not be confirmed by the server: your session may still be " +
              "active on this computer. Try signing out again, or close the browser.");
    $("signin-retry-signout").hidden = false;
  }

  // --- Features this server has off (e.g. a local deploy without keys) ----------------

  const FEATURE_NAMES = { signIn: "Google sign-in", assistant: "The assistant" };

  // Says which features are off and what turns them on, instead of a sign-in that can
  // only fail; a server that cannot tell leaves the page as it is.
  async function showFeatures() {
    let features;
    try {
      const response = await fetch("/api/features", { headers: { Accept: "application/json" } });
      if (!response.ok) return;
      features = await response.json();
    } catch (error) {
      return;
    }
    const off = Object.entries(features).filter(([, feature]) => feature && !feature.enabled);
    const box = $("features-off");
    box.replaceChildren(...off.map(([name, feature]) => {
      const line = document.createElement("p");
      line.textContent = (FEATURE_NAMES[name] || name) + " is off on this server. Its " +
        "operator turns it on by setting " + (feature.enableWith || []).join(" and ") + ".";
      return line;
    }));
    box.hidden = off.length === 0;
    $("sign-in").hidden = Boolean(features.signIn && !features.signIn.enabled);
  }

  async function start() {
    await showFeatures();
    if (location.hash === "#signed-in") {
      history.replaceState(null, "", location.pathname);
      sessionStorage.removeItem(LOGOUT_PENDING);  // a deliberate new sign-in
    }
    if (sessionStorage.getItem(LOGOUT_PENDING)) {
      await signOut();
      return;
    }
    if (!(await refreshAccessToken())) {
      signedOut("");
      return;
    }
    const response = await api("/api/me");
    if (!response.ok) {
      signedOut(await errorMessage(response));
      return;
    }
    const me = await response.json();
    state.user = me.user || me;
    $("user-email").textContent = state.user.email || "";
    show("signedIn");
    await Promise.all([loadAgents(), loadConversations()]);
    if (state.conversations.length) await selectConversation(state.conversations[0].id);
  }

  // --- Conversations ------------------------------------------------------------------

  function listFrom(data) {
    if (Array.isArray(data)) return data;
    return data.conversations || data.items || data.data || [];
  }

  function conversationFrom(data) {
    return data.conversation || data;
  }

  async function loadAgents() {
    const select = $("agent-select");
    let agents = [{ name: "general", description: "General assistant" }];
    try {
      const response = await api("/api/agents");
      if (response.ok) agents = (await response.json()).agents || agents;
    } catch (error) {
      // keep the default agent
    }
    select.replaceChildren();
    for (const agent of agents) {
      const option = document.createElement("option");
      option.value = agent.name;
      option.textContent = agent.name;
      option.title = agent.description || "";
      select.append(option);
    }
    if (agents.some((agent) => agent.name === "general")) select.value = "general";
  }

  async function loadConversations() {
    const response = await api("/api/conversations");
    if (!response.ok) {
      showError("chat-error", await errorMessage(response));
      return;
    }
    state.conversations = listFrom(await response.json());
    renderConversations();
  }

  function renderConversations() {
    const list = $("conversation-list");
    list.replaceChildren();
    for (const conversation of state.conversations) {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = conversation.id === state.currentId ? "active" : "";
      button.textContent = conversation.title || "New conversation";
      button.title = button.textContent;
      button.dataset.id = conversation.id;
      button.addEventListener("click", () => selectConversation(conversation.id));
      item.append(button);
      list.append(item);
    }
  }

  async function createConversation() {
    const agent = $("agent-select").value || undefined;
    const response = await api("/api/conversations", { method: "POST", json: agent ? { agent } : {} });
    if (!response.ok) {
      showError("chat-error", await errorMessage(response));
      return null;
    }
    const conversation = conversationFrom(await response.json());
    state.conversations.unshift(conversation);
    state.currentId = conversation.id;
    renderConversations();
    clearMessages();
    return conversation;
  }

  async function selectConversation(id) {
    state.currentId = id;
    renderConversations();
    showError("chat-error", "");
    const response = await api("/api/conversations/" + encodeURIComponent(id));
    if (!response.ok) {
      showError("chat-error", await errorMessage(response));
      return;
    }
    const conversation = conversationFrom(await response.json());
    clearMessages();
    for (const message of conversation.messages || []) {
      if (message.role === "user" || message.role === "assistant") {
        if (!message.content) continue;
        const element = addMessage(message.role, message.content);
        if (message.status === "error") element.classList.add("failed");
      }
    }
    if (state.currentId === id) await loadProposals(id);
  }

  // --- Messages -----------------------------------------------------------------------

  function clearMessages() {
    const box = $("messages");
    box.replaceChildren($("empty-chat") || emptyNote());
    $("empty-chat").hidden = false;
  }

  function emptyNote() {
    const note = document.createElement("p");
    note.id = "empty-chat";
    note.className = "muted empty";
    note.textContent = "Start a conversation: ask about your inbox, or anything else.";
    return note;
  }

  function showStatus(text) {
    const element = $("chat-status");
    element.textContent = text;
    element.hidden = !text;
  }

  const NOTICES = {
    gmail_access_missing:
      "Gmail access was not granted. To use the email agent, sign out, sign in again and allow Gmail on Google's consent page.",
    google_not_connected: "Your Google account is not connected any more. Please sign in with Google again.",
    google_unavailable: "Google could not be reached just now. Please try again in a moment.",
    google_not_configured: "Google sign-in is off on this server.",
  };

  function addNotice(code) {
    const text = NOTICES[code] || (String(code).includes(" ") ? String(code) : "");
    if (!text) return;
    const element = document.createElement("p");
    element.className = "notice";
    element.textContent = text;
    $("messages").append(element);
  }

  // --- Draft proposals: nothing reaches Gmail until the user approves here ------------

  function field(labelText, element) {
    const label = document.createElement("label");
    label.className = "proposal-field";
    const span = document.createElement("span");
    span.textContent = labelText;
    label.append(span, element);
    return label;
  }

  function addProposal(proposal) {
    $("empty-chat").hidden = true;
    const card = document.createElement("form");
    card.className = "proposal";
    card.dataset.proposalId = proposal.id;
    const title = document.createElement("p");
    title.className = "proposal-title";
    title.textContent = "Proposed reply: review it, edit it if needed, then approve to save it to your Gmail drafts (it is not sent).";
    const to = document.createElement("input");
    to.name = "to";
    to.value = proposal.to || "";
    const subject = document.createElement("input");
    subject.name = "subject";
    subject.value = proposal.subject || "";
    const body = document.createElement("textarea");
    body.name = "body";
    body.rows = 6;
    body.value = proposal.body || "";
    const approve = document.createElement("button");
    approve.type = "submit";
    approve.className = "approve";
    approve.textContent = "Approve and save draft";
    const reject = document.createElement("button");
    reject.type = "button";
    reject.className = "reject secondary";
    reject.textContent = "Discard";
    const status = document.createElement("p");
    status.className = "proposal-status";
    status.hidden = true;
    const actions = document.createElement("div");
    actions.className = "proposal-actions";
    actions.append(approve, reject);
    card.append(title, field("To", to), field("Subject", subject), field("Message", body),
                actions, status);

    async function decide(action, payload) {
      approve.disabled = reject.disabled = true;
      status.hidden = false;
      status.textContent = action === "approve" ? "Saving…" : "Discarding…";
      try {
        const response = await api("/api/drafts/" + encodeURIComponent(proposal.id) + "/" + action,
                                    { method: "POST", json: payload || {} });
        if (!response.ok) throw new Error(await errorMessage(response));
        for (const input of [to, subject, body]) input.disabled = true;
        actions.hidden = true;
        status.textContent = action === "approve"
          ? "Saved to your Gmail drafts. Nothing was sent."
          : "Discarded. Nothing was saved to Gmail.";
        card.classList.add(action === "approve" ? "approved" : "rejected");
      } catch (error) {
        if (error.message === "signed out") return;
        status.textContent = error.message;
        status.classList.add("error");
        approve.disabled = reject.disabled = false;
      }
    }

    card.addEventListener("submit", (event) => {
      event.preventDefault();
      decide("approve", { to: to.value, subject: subject.value, body: body.value });
    });
    reject.addEventListener("click", () => decide("reject"));
    $("messages").append(card);
    card.scrollIntoView({ block: "end" });
    return card;
  }

  async function loadProposals(conversationId) {
    const response = await api("/api/drafts?status=pending&conversationId=" +
                               encodeURIComponent(conversationId));
    if (!response.ok) return;
    const data = await response.json();
    for (const proposal of (data.drafts || []).slice().reverse()) addProposal(proposal);
  }

  function addMessage(role, text) {
    $("empty-chat").hidden = true;
    const element = document.createElement("div");
    element.className = "message " + role;
    element.textContent = text;
    $("messages").append(element);
    element.scrollIntoView({ block: "end" });
    return element;
  }

  // Server-Sent Events over fetch (EventSource cannot POST or send an Authorization header).
  async function* readEvents(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
      buffer = buffer.replace(/\r\n?/g, "\n");
      let boundary;
      while ((boundary = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, boundary);
        buffer = buffer.slice(boundary + 2);
        const event = parseEvent(block);
        if (event) yield event;
      }
      if (done) {
        const event = parseEvent(buffer);
        if (event) yield event;
        return;
      }
    }
  }

  function parseEvent(block) {
    let name = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") name = value;
      else if (field === "data") data.push(value);
    }
    if (!data.length) return null;
    const raw = data.join("\n");
    let payload = raw;
    try {
      payload = JSON.parse(raw);
    } catch (error) {
      // plain-text data
    }
    return { name, payload, raw };
  }

  function textOf(payload) {
    if (typeof payload === "string") return payload;
    if (!payload || typeof payload !== "object") return "";
    for (const key of ["delta", "content", "text", "token"]) {
      if (typeof payload[key] === "string") return payload[key];
    }
    return "";
  }

  async function sendMessage(content) {
    let conversation = state.conversations.find((c) => c.id === state.currentId);
    if (!conversation) conversation = await createConversation();
    if (!conversation) return;
    addMessage("user", content);
    const bubble = addMessage("assistant", "");
    bubble.classList.add("streaming");
    let reply = "";
    try {
      const response = await api(
        "/api/conversations/" + encodeURIComponent(conversation.id) + "/messages",
        { method: "POST", json: { content }, headers: { Accept: "text/event-stream" } });
      if (!response.ok) throw new Error(await errorMessage(response));
      const type = response.headers.get("Content-Type") || "";
      if (!type.startsWith("text/event-stream")) {
        const data = await response.json();
        const message = data.reply || data.message || data.assistant || data;
        reply = textOf(message);
        bubble.textContent = reply;
        if (data.notice) addNotice(data.notice);
      } else {
        for await (const event of readEvents(response)) {
          if (event.raw === "[DONE]") break;
          if (event.name === "error" || (event.payload && event.payload.error)) {
            const error = event.payload && event.payload.error;
            throw new Error(typeof error === "string" ? error : (error && error.message) || "The assistant failed to answer.");
          }
          if (event.name === "proposal") {
            if (event.payload && event.payload.id) addProposal(event.payload);
            continue;
          }
          if (event.name === "tool") {
            showStatus("Working: " + ((event.payload && event.payload.name) || "tool") + "…");
            continue;
          }
          if (["done", "end", "complete", "message_complete"].includes(event.name)) {
            const final = event.payload && (event.payload.message || event.payload);
            if (!reply && textOf(final)) bubble.textContent = reply = textOf(final);
            if (event.payload && event.payload.notice) addNotice(event.payload.notice);
            break;
          }
          if (["message", "delta", "token", "chunk", "content"].includes(event.name)) {
            reply += textOf(event.payload);
            bubble.textContent = reply;
            bubble.scrollIntoView({ block: "end" });
          }
        }
      }
      if (!conversation.title) {
        conversation.title = content.slice(0, 60);
        renderConversations();
      }
    } catch (error) {
      if (error.message !== "signed out") {
        bubble.classList.add("failed");
        bubble.textContent = reply || error.message;
        showError("chat-error", error.message);
      }
    } finally {
      bubble.classList.remove("streaming");
      showStatus("");
    }
  }

  // --- Wiring -------------------------------------------------------------------------

  $("sign-out").addEventListener("click", signOut);
  $("signin-retry-signout").addEventListener("click", signOut);
  $("new-conversation").addEventListener("click", () => {
    showError("chat-error", "");
    createConversation();
  });
  $("composer").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("message-input");
    const content = input.value.trim();
    if (!content || state.sending) return;
    state.sending = true;
    $("send").disabled = true;
    showError("chat-error", "");
    input.value = "";
    try {
      await sendMessage(content);
    } finally {
      state.sending = false;
      $("send").disabled = false;
      input.focus();
    }
  });
  $("message-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });

  start().catch(() => signedOut("Something went wrong while loading. Please reload the page."));
})();
